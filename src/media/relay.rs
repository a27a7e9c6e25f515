//! `Relay`: the packet path of an engine. It runs a peer connection's output to completion
//! (str0m's `poll_output`), forwards each RTP packet of a source to every target of the
//! fan-out (renumbered per subscriber m-line by its `Rewrite`), passes keyframe requests
//! upstream, hears audio levels for the dominant speaker, and lets a subscriber's `Allocation`
//! pause or resume its video. It owns the engine's output queues (transmits and events), its
//! counters and quality samples, and the buffers the hot path reuses; the maps it reads and
//! writes belong to the other parts and are lent to it for each call as [`Parts`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Frequency, KeyframeRequest, KeyframeRequestKind, Mid, Pt};
use str0m::net::Protocol;
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, VideoOrientation};
use str0m::{Event, Input, Output};

use super::allocation::Change;
use super::cap::Viewers;
use super::devices::Devices;
use super::fanout::Fanout;
use super::keys::{PeerId, Source, Target};
use super::output::{EngineEvent, Transmit, Transport};
use super::peers::{Peers, KEYFRAME_REQUEST_INTERVAL};
use super::quality::{self, QualitySamples};
use super::rewrite::Origin;
use super::routes::HostedRoutes;
use super::speaker::Speakers;
use super::MediaCounters;
use crate::domain::MediaKind;

/// A packet on its way through [`Relay::forward`]: an incoming RTP packet of a publisher,
/// or a phone's audio frame numbered by the engine. Borrowed: forwarding copies nothing but
/// the reference count of the payload.
pub(super) struct Packet<'a> {
    pub(super) origin: Origin,
    /// The origin's payload type and codec parameters; `None` for a phone's Opus.
    pub(super) params: Option<PayloadParams>,
    pub(super) codec: Codec,
    pub(super) clock_rate: u32,
    pub(super) seq: u64,
    pub(super) ts: u32,
    /// Extended RTP time at 48 kHz (what a local device receives).
    pub(super) time_48k: u64,
    pub(super) marker: bool,
    pub(super) audio_level: Option<i8>,
    pub(super) voice_activity: Option<bool>,
    pub(super) video_orientation: Option<VideoOrientation>,
    pub(super) arrival: Instant,
    pub(super) payload: &'a Arc<[u8]>,
}

/// How long a subscriber's video packets stay available for retransmission (answering its
/// NACKs), and at most how many. Audio is not retransmitted (browsers do not NACK Opus; its
/// FEC and concealment cover a loss), so audio packets are never cached.
pub const VIDEO_RTX_WINDOW: Duration = Duration::from_secs(1);
/// The packet cap of [`VIDEO_RTX_WINDOW`] (a 4 Mbit/s stream sends about 400 packets a second).
pub const VIDEO_RTX_PACKETS: usize = 500;
/// str0m drops a video stream's queued resends once resends make up more than this share of
/// what it sends. str0m's default, 0.15, starved a link losing 10 % at random: resends were
/// dropped and asked for again, and the page froze 5-14 s a minute; at 0.3, 0-2 s
/// (BENCHMARKS.md, "A lossy link").
const VIDEO_RTX_RATIO_CAP: f32 = 0.3;

/// A connection's timeout this close to now is run at once by [`Relay::drain_peer`] (see
/// there), rather than left to the driver's next wake-up.
const PACER_STEP: Duration = Duration::from_millis(1);
/// At most this many such steps per drain (a pacer's burst is about 40 ms of media at its
/// rate; this only bounds a connection that would keep asking).
const PACER_STEPS_MAX: u32 = 256;

/// The packet path and the outputs of one engine (see the module docs).
#[derive(Default)]
pub(super) struct Relay {
    /// Datagrams for the driver to send.
    pub(super) transmits: VecDeque<Transmit>,
    /// Events for the driver.
    pub(super) events: VecDeque<EngineEvent>,
    pub(super) counters: MediaCounters,
    pub(super) samples: QualitySamples,
    /// Subscribe connections estimate their bandwidth (`--subscriber-bwe`): only then is
    /// what each m-line is sent counted for its allocation.
    pub(super) subscriber_bwe: bool,
    /// Reused buffers: no allocation per forwarded packet.
    scratch: Vec<Target>,
    incoming: Vec<(Mid, RtpPacket)>,
}

/// The parts of the engine the packet path works on, lent for one call.
pub(super) struct Parts<'a> {
    pub(super) peers: &'a mut Peers,
    pub(super) fanout: &'a Fanout,
    pub(super) devices: &'a Devices,
    pub(super) routes: &'a HostedRoutes,
    pub(super) speakers: &'a mut Speakers,
}

impl Parts<'_> {
    /// When the publisher of what a subscriber's `mid` carries last spoke.
    fn last_spoke(&self, subscriber: PeerId, mid: Mid) -> Option<Instant> {
        let device = match self.fanout.upstream(subscriber, mid)? {
            Source::Peer { peer, .. } => self.peers.get(peer)?.device,
            Source::Local(device) => device,
        };
        let participant = self.devices.get(device)?.participant;
        let session = self.routes.session_of(participant)?;
        self.speakers.last_spoke(session, participant)
    }
}

impl Relay {
    /// Empty queues; `subscriber_bwe` as the engine is configured.
    pub(super) fn new(subscriber_bwe: bool) -> Relay {
        Relay {
            subscriber_bwe,
            ..Relay::default()
        }
    }

    /// Asks a publisher's track for a keyframe, unless one was asked of it within
    /// [`KEYFRAME_REQUEST_INTERVAL`] (the keyframe that request brings serves this one too).
    pub(super) fn request_keyframe(
        &mut self,
        parts: &mut Parts<'_>,
        peer_id: PeerId,
        mid: Mid,
        kind: KeyframeRequestKind,
        now: Instant,
    ) -> bool {
        let Some(peer) = parts.peers.get_mut(peer_id) else {
            return false;
        };
        if peer
            .keyframe_asked
            .get(&mid)
            .is_some_and(|at| now.saturating_duration_since(*at) < KEYFRAME_REQUEST_INTERVAL)
        {
            self.counters.keyframe_requests_merged += 1;
            return false;
        }
        // FIR only where the publisher negotiated it; PLI otherwise.
        let possible = |kind| {
            peer.rtc.codec_config().params().iter().any(|p| match kind {
                KeyframeRequestKind::Pli => p.fb_pli(),
                KeyframeRequestKind::Fir => p.fb_fir(),
            })
        };
        let kind = if possible(kind) {
            kind
        } else {
            KeyframeRequestKind::Pli
        };
        if !possible(kind) {
            return false;
        }
        let mut api = peer.rtc.direct_api();
        let Some(stream) = api.stream_rx_by_mid(mid, None) else {
            return false;
        };
        stream.request_keyframe(kind);
        peer.keyframe_asked.insert(mid, now);
        peer.quality.keyframe_asked();
        self.counters.keyframe_requests += 1;
        // The request becomes RTCP feedback on the connection's next timeout: run it now.
        if peer.rtc.handle_input(Input::Timeout(now)).is_err() {
            peer.rtc.disconnect();
        }
        self.drain_peer(parts, peer_id, now);
        true
    }

    /// Runs a peer's output to completion, then acts on what it said: media is forwarded,
    /// keyframe requests go upstream.
    pub(super) fn drain_peer(&mut self, parts: &mut Parts<'_>, peer_id: PeerId, now: Instant) {
        // A publish connection's REMBs, when due, leave with the first timeout below (no
        // lookup at all without estimation).
        if self.subscriber_bwe
            && parts
                .peers
                .get_mut(peer_id)
                .is_some_and(|p| !p.subscribe && p.caps.due(now))
        {
            self.cap_publisher(parts, peer_id, now);
        }
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut keyframe_requests = Vec::new();
        let Some(peer) = parts.peers.get_mut(peer_id) else {
            self.incoming = incoming;
            return;
        };
        let mut steps = 0;
        let mut sent = true;
        let next_timeout = loop {
            match peer.rtc.poll_output() {
                // str0m's pacer (a connection that estimates its bandwidth) hands out one
                // packet per timeout and asks for the next a microsecond later. Left to the
                // driver, whose timer wakes at most once a millisecond, that caps such a
                // subscriber at a thousand packets a second whatever its estimate: run those
                // steps here while they send (the pacer's own budget ends the burst).
                Ok(Output::Timeout(t))
                    if sent && t <= now + PACER_STEP && steps < PACER_STEPS_MAX =>
                {
                    steps += 1;
                    sent = false;
                    if peer.rtc.handle_input(Input::Timeout(t.max(now))).is_err() {
                        peer.rtc.disconnect();
                        break now + Duration::from_secs(3600);
                    }
                }
                Ok(Output::Timeout(t)) => break t,
                Ok(Output::Transmit(t)) => {
                    sent = true;
                    self.transmits.push_back(Transmit {
                        source: t.source,
                        destination: t.destination,
                        transport: match t.proto {
                            Protocol::Udp => Transport::Udp,
                            _ => Transport::Tcp,
                        },
                        contents: t.contents.into(),
                    })
                }
                Ok(Output::Event(event)) => match event {
                    Event::RtpPacket(packet) => {
                        let ssrc = packet.header.ssrc;
                        if let Some(stream) = peer.rtc.direct_api().stream_rx(&ssrc) {
                            incoming.push((stream.mid(), packet));
                        }
                    }
                    Event::KeyframeRequest(req) => keyframe_requests.push(req),
                    Event::Connected => {
                        peer.quality.connected();
                        self.events.push_back(EngineEvent::Connected {
                            device: peer.device,
                            subscribe: peer.subscribe,
                        });
                    }
                    Event::MediaIngressStats(s) => {
                        let kind = quality::kind_of(&peer.rtc, s.mid);
                        peer.quality.ingress(&s, kind, &mut self.counters);
                    }
                    Event::MediaEgressStats(s) => {
                        let kind = quality::kind_of(&peer.rtc, s.mid);
                        let (counters, samples) = (&mut self.counters, &mut self.samples);
                        peer.quality.egress(&s, kind, counters, samples);
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc {
                        estimate,
                        can_probe: true,
                    }) => {
                        tracing::trace!(
                            peer = peer_id,
                            bps = estimate.as_u64(),
                            "subscriber estimate"
                        );
                        peer.allocation.set_estimate(estimate.as_u64(), now);
                    }
                    Event::PeerStats(s) => {
                        if let Some(lost) = s.egress_loss_fraction {
                            tracing::trace!(peer = peer_id, lost, "subscriber loss, last second");
                            peer.allocation.set_loss(lost, now);
                        }
                    }
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
                    break now + Duration::from_secs(3600);
                }
            }
        };
        let subscribe = peer.subscribe;
        parts.peers.set_timeout(peer_id, next_timeout);
        if subscribe {
            self.allocate(parts, peer_id, now);
        }
        self.forward_incoming(parts, peer_id, &mut incoming, now);
        // Keep the buffer (a nested drain may have left its own in place: either will do).
        if self.incoming.capacity() < incoming.capacity() {
            self.incoming = incoming;
        }
        self.pass_keyframe_requests(parts, peer_id, keyframe_requests, now);
    }

    /// A subscriber's video allocation decides (pause, resume) and its estimator is told what
    /// to probe for. Its tracks are ordered by when their publishers last spoke.
    fn allocate(&mut self, parts: &mut Parts<'_>, peer_id: PeerId, now: Instant) {
        let spoke: Vec<(Mid, Instant)> = match parts.peers.get(peer_id) {
            Some(peer) if peer.allocation.decision_due(now) => peer
                .allocation
                .video_mids()
                .filter_map(|mid| Some((mid, parts.last_spoke(peer_id, mid)?)))
                .collect(),
            Some(_) => Vec::new(),
            None => return,
        };
        let Some(peer) = parts.peers.get_mut(peer_id) else {
            return;
        };
        let spoke_of = |mid: Mid| spoke.iter().find(|(m, _)| *m == mid).map(|(_, at)| *at);
        match peer.allocation.decide(now, spoke_of) {
            Some(Change::Pause(mid)) => {
                self.counters.video_pauses += 1;
                tracing::debug!(device = peer.device.0, %mid, estimate = ?peer.allocation.estimate(), "video paused: the subscriber's link is short");
            }
            Some(Change::Resume(mid)) => {
                self.counters.video_resumes += 1;
                tracing::debug!(device = peer.device.0, %mid, estimate = ?peer.allocation.estimate(), "video resumed");
                if let Some(rewrite) = peer.outgoing.get_mut(&mid) {
                    rewrite.restart();
                }
            }
            None => {}
        }
        if let Some(from) = peer.allocation.restart_due(now) {
            self.counters.estimate_restarts += 1;
            tracing::debug!(
                device = peer.device.0,
                from,
                "subscriber estimate restarted (lagging or stalled)"
            );
            peer.rtc.bwe().reset(Bitrate::bps(from));
        }
        if let Some(target) = peer.allocation.probe_target_due(now) {
            peer.rtc
                .bwe()
                .set_bitrate(Bitrate::ZERO, Bitrate::bps(target));
        }
    }

    /// A publish connection's video tracks are weighed for a ceiling (`cap.rs`): a track with
    /// one viewer follows that viewer's estimate; its viewer's allocation is told.
    fn cap_publisher(&mut self, parts: &mut Parts<'_>, peer_id: PeerId, now: Instant) {
        for mid in parts.fanout.mids_of(peer_id) {
            let Some(publisher) = parts.peers.get(peer_id) else {
                return;
            };
            if quality::kind_of(&publisher.rtc, mid) != Some(MediaKind::Video) {
                continue;
            }
            let source = Source::Peer { peer: peer_id, mid };
            let all: Vec<(PeerId, Mid)> = parts
                .fanout
                .targets(&source)
                .iter()
                .filter_map(|t| match t {
                    Target::Peer { peer, mid } => Some((*peer, *mid)),
                    Target::Local { .. } => None,
                })
                .collect();
            let watching: Vec<(PeerId, Mid)> = all
                .iter()
                .copied()
                .filter(|(peer, mid)| {
                    parts
                        .peers
                        .get(*peer)
                        .is_some_and(|p| !p.allocation.is_paused(*mid))
                })
                .collect();
            let one = match watching.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            for (peer, smid) in all {
                if let Some(sub) = parts.peers.get_mut(peer) {
                    sub.allocation.set_capped(smid, one == Some((peer, smid)));
                }
            }
            let viewers = match one.and_then(|(peer, _)| parts.peers.get(peer)) {
                // A viewer sent several video tracks shares its estimate among them.
                Some(viewer) => Viewers::One(
                    viewer
                        .allocation
                        .estimate()
                        .map(|e| e / u64::from(viewer.allocation.sending_video_tracks().max(1))),
                ),
                None => Viewers::NotOne,
            };
            let Some(publisher) = parts.peers.get_mut(peer_id) else {
                return;
            };
            let Some(bps) = publisher.caps.decide(mid, viewers, now) else {
                continue;
            };
            tracing::trace!(peer = peer_id, %mid, ?viewers, bps, "publisher video ceiling (REMB)");
            if let Some(stream) = publisher.rtc.direct_api().stream_rx_by_mid(mid, None) {
                stream.request_remb(Bitrate::bps(bps));
                self.counters.publisher_caps += 1;
            }
        }
    }

    /// The media a peer's drain received goes through [`Relay::forward`].
    fn forward_incoming(
        &mut self,
        parts: &mut Parts<'_>,
        peer_id: PeerId,
        incoming: &mut Vec<(Mid, RtpPacket)>,
        now: Instant,
    ) {
        for (mid, rtp) in incoming.drain(..) {
            let Some(peer) = parts.peers.get(peer_id) else {
                break;
            };
            let pt = rtp.header.payload_type;
            let Some(params) = peer
                .rtc
                .codec_config()
                .params()
                .iter()
                .find(|p| p.pt() == pt)
                .copied()
            else {
                self.counters.forward_failures += 1;
                continue;
            };
            let spec = params.spec();
            let ext = &rtp.header.ext_vals;
            let packet = Packet {
                origin: Origin {
                    source: Source::Peer { peer: peer_id, mid },
                    ssrc: *rtp.header.ssrc,
                },
                params: Some(params),
                codec: spec.codec,
                clock_rate: spec.clock_rate.get(),
                seq: *rtp.seq_no,
                ts: rtp.header.timestamp,
                time_48k: rtp.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer(),
                marker: rtp.header.marker,
                audio_level: ext.audio_level,
                voice_activity: ext.voice_activity,
                video_orientation: ext.video_orientation,
                arrival: rtp.timestamp,
                payload: &rtp.payload,
            };
            self.forward(parts, &packet, now);
        }
    }

    /// A subscriber's keyframe requests go to the publishers of its tracks, unless its link
    /// is short or the track paused.
    fn pass_keyframe_requests(
        &mut self,
        parts: &mut Parts<'_>,
        peer_id: PeerId,
        keyframe_requests: Vec<KeyframeRequest>,
        now: Instant,
    ) {
        for req in keyframe_requests {
            self.counters.keyframe_requests_received += 1;
            // A subscriber whose link is short (or whose track is paused) would only make
            // every subscriber of the publisher pay for a keyframe it cannot receive.
            let held = parts
                .peers
                .get(peer_id)
                .is_some_and(|p| !p.allocation.passes_keyframe_requests(req.mid));
            let passed = if held {
                self.counters.keyframe_requests_held += 1;
                false
            } else {
                match parts.fanout.upstream(peer_id, req.mid) {
                    Some(Source::Peer { peer, mid }) => {
                        self.request_keyframe(parts, peer, mid, req.kind, now)
                    }
                    _ => false,
                }
            };
            if let Some(sub) = parts.peers.get_mut(peer_id) {
                sub.quality.keyframe_request_passed(passed);
            }
        }
    }

    /// The one forwarding loop: a packet of a source goes to every target of the fan-out,
    /// renumbered for each subscriber's m-line (`Rewrite`).
    pub(super) fn forward(&mut self, parts: &mut Parts<'_>, packet: &Packet<'_>, now: Instant) {
        if let (Some(level), Codec::Opus) = (packet.audio_level, packet.codec) {
            self.hear(parts, packet.origin.source, level.unsigned_abs(), now);
        }
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        targets.extend_from_slice(parts.fanout.targets(&packet.origin.source));
        let video = packet.codec.is_video();
        let mut switched = false;
        for &target in &targets {
            match target {
                Target::Local { device, source } => {
                    if matches!(packet.codec, Codec::Opus | Codec::Tele) {
                        self.events.push_back(EngineEvent::LocalMedia {
                            device,
                            source,
                            rtp_time: packet.time_48k,
                            dtmf: packet.codec == Codec::Tele,
                            data: packet.payload.clone(),
                        });
                        self.counters.forwarded(packet.payload.len());
                    }
                }
                Target::Peer { peer, mid } => {
                    let Some(sub) = parts.peers.get_mut(peer) else {
                        continue;
                    };
                    if video && sub.allocation.is_paused(mid) {
                        continue;
                    }
                    let rewrite = sub.outgoing.entry(mid).or_default();
                    let config = sub.rtc.codec_config();
                    let pt =
                        rewrite.pt(
                            packet.params.map_or(Pt::from(0), |p| p.pt()),
                            || match packet.params {
                                Some(p) => config.match_params(p).map(|p| p.pt()),
                                None => config
                                    .params()
                                    .iter()
                                    .find(|p| p.spec().codec == Codec::Opus)
                                    .map(|p| p.pt()),
                            },
                        );
                    let Some(pt) = pt else {
                        self.counters.forward_failures += 1;
                        continue;
                    };
                    let Some(out) =
                        rewrite.map(packet.origin, packet.seq, packet.ts, packet.clock_rate, now)
                    else {
                        continue;
                    };
                    switched |= out.switched;
                    let sized_for = rewrite.sized_for;
                    let mut api = sub.rtc.direct_api();
                    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                        self.counters.forward_failures += 1;
                        continue;
                    };
                    let ssrc = *tx.ssrc();
                    if sized_for != Some(ssrc) {
                        if video {
                            tx.set_rtx_cache(
                                VIDEO_RTX_PACKETS,
                                VIDEO_RTX_WINDOW,
                                Some(VIDEO_RTX_RATIO_CAP),
                            );
                        } else {
                            tx.set_rtx_cache(0, Duration::ZERO, None);
                        }
                    }
                    let ext = ExtensionValues {
                        audio_level: packet.audio_level,
                        voice_activity: packet.voice_activity,
                        video_orientation: packet.video_orientation,
                        ..ExtensionValues::default()
                    };
                    tx.write_rtp(
                        RtpWrite::new(
                            pt,
                            out.seq.into(),
                            out.ts,
                            packet.arrival,
                            packet.payload.clone(),
                        )
                        .marker(packet.marker)
                        .ext_vals(ext)
                        .nackable(video),
                    );
                    if let Some(rewrite) = sub.outgoing.get_mut(&mid) {
                        rewrite.sized_for = Some(ssrc);
                    }
                    // Only an estimating connection needs its sent rates (no second lookup,
                    // no work per packet with `--subscriber-bwe false`).
                    if self.subscriber_bwe {
                        sub.allocation.sent(mid, video, packet.payload.len(), now);
                    }
                    self.counters.forwarded(packet.payload.len());
                    // Sent at the subscriber's next timeout, once for the whole batch.
                    parts.peers.written(peer, now);
                }
            }
        }
        self.scratch = targets;
        // A subscriber switched to this source mid-stream: its decoder needs a keyframe.
        if switched && video {
            if let Source::Peer { peer, mid } = packet.origin.source {
                self.request_keyframe(parts, peer, mid, KeyframeRequestKind::Pli, now);
            }
        }
    }
    /// An audio level of `source` counts for its session's dominant speaker.
    fn hear(&mut self, parts: &mut Parts<'_>, source: Source, level: u8, now: Instant) {
        let device = match source {
            Source::Peer { peer, .. } => match parts.peers.get(peer) {
                Some(p) => p.device,
                None => return,
            },
            Source::Local(device) => device,
        };
        let Some(dev) = parts.devices.get(device) else {
            return;
        };
        let (participant, phone) = (dev.participant, dev.is_local());
        let Some(session) = parts.routes.session_of(participant) else {
            return;
        };
        if let Some(change) = parts.speakers.hear(session, participant, phone, level, now) {
            self.events.push_back(EngineEvent::ActiveSpeaker(change));
        }
    }
}
