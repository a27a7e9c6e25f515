//! `Peers`: the WebRTC peer connections of one engine. Owns peer id → `str0m::Rtc` (with the
//! device it belongs to and its role) and the timer queue: each peer's next deadline, ordered,
//! so a timeout runs only the peers that are due and the next deadline is the queue's first.
//! It opens a device's connection (its codecs, this process's ICE credentials, the configured
//! candidates) and closes it, keeping the `Demux` it is lent in step.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::channel::ChannelConfig;
use str0m::config::DtlsCert;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, Mid};
use str0m::net::TcpType;
use str0m::{Candidate, Rtc, RtcConfig};

use super::allocation::Allocation;
use super::cap::Caps;
use super::config::EngineConfig;
use super::demux::Demux;
use super::ice;
use super::keys::PeerId;
use super::quality::{PeerQuality, STATS_INTERVAL};
use super::rewrite::Rewrite;
use super::DeviceId;
use crate::domain::MediaKinds;

/// The shortest interval between two keyframe requests sent to one publisher's track: the
/// requests of many subscribers asking at once (a re-wire, a burst of loss) become one, and
/// the keyframe it brings serves them all.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// Where a subscribe connection's bandwidth estimate starts (kbit/s): high enough that a call's
/// video is not paused while the estimator probes its way up, low enough that a thin link is
/// found within a second or two of congestion.
pub(super) const SUBSCRIBER_INITIAL_ESTIMATE_KBPS: u64 = 2_500;

/// The SDK's pre-negotiated data channels: (id, label).
pub(super) const BUILTIN_CHANNELS: [(u16, &str); 2] =
    [(0, "__heartbeat__"), (1, "__diagnostics__")];

pub(super) fn builtin_channel(id: u16, label: &str) -> ChannelConfig {
    ChannelConfig {
        label: label.to_owned(),
        negotiated: Some(id),
        protocol: "udp".to_owned(),
        ..Default::default()
    }
}

/// The SDK's pre-negotiated channels (ids 0 and 1), created on a publish connection before
/// the association can carry data on them.
pub(super) fn open_builtin_channels(rtc: &mut Rtc) {
    for (id, label) in BUILTIN_CHANNELS {
        rtc.direct_api()
            .create_data_channel(builtin_channel(id, label));
    }
}

/// The codecs of a peer connection: Opus (+ telephone-event) for audio, VP8 and H.264 for
/// video, each only when `kinds` allows it, so a refused kind's m-lines are rejected.
///
/// RTP mode: str0m hands over each incoming packet as it arrives (after SRTP, NACK
/// bookkeeping and the repair of retransmissions) instead of reassembled frames, and sends
/// what the engine writes per packet. Nothing is held back waiting for a missing packet: the
/// receiving browser's jitter buffer orders and conceals.
pub(super) fn peer_config(cert: &DtlsCert, kinds: MediaKinds, bwe: bool) -> RtcConfig {
    let mut rtc = Rtc::builder()
        .set_ice_lite(true)
        .set_dtls_cert(cert.clone())
        .set_rtp_mode(true)
        .set_stats_interval(Some(STATS_INTERVAL))
        .clear_codecs()
        .enable_opus(kinds.audio, false)
        .enable_vp8(kinds.video)
        .enable_h264(kinds.video);
    if bwe {
        // What a subscriber's link carries is estimated from its TWCC feedback (issue 21):
        // the allocation pauses video that does not fit, never audio.
        rtc = rtc.enable_bwe(Some(Bitrate::kbps(SUBSCRIBER_INITIAL_ESTIMATE_KBPS)));
    }
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

pub(super) struct Peer {
    pub(super) device: DeviceId,
    /// The subscribe connection (the engine offers) rather than the publish one.
    pub(super) subscribe: bool,
    pub(super) rtc: Rtc,
    pub(super) ufrag: String,
    /// str0m's own ufrag for the connection after an ICE restart the engine answered, which
    /// its candidates keep (the engine gave the connection a tagged one): rewritten in every
    /// answer.
    pub(super) candidate_ufrag: Option<String>,
    /// A subscribe connection's outgoing m-lines: each one's numbering.
    pub(super) outgoing: HashMap<Mid, Rewrite>,
    /// A publish connection's tracks: when a keyframe was last asked of each.
    pub(super) keyframe_asked: HashMap<Mid, Instant>,
    /// What the connection measured (it moves with the connection).
    pub(super) quality: PeerQuality,
    /// A subscribe connection's video pauses for its link (it moves with the connection).
    pub(super) allocation: Allocation,
    /// A publish connection's video ceilings while a track has one viewer (`cap.rs`).
    pub(super) caps: Caps,
    timeout: Instant,
}

impl Peer {
    /// A peer due for its first timeout at `now`.
    pub(super) fn new(
        device: DeviceId,
        subscribe: bool,
        rtc: Rtc,
        ufrag: String,
        now: Instant,
    ) -> Peer {
        Peer {
            device,
            subscribe,
            rtc,
            ufrag,
            candidate_ufrag: None,
            outgoing: HashMap::new(),
            keyframe_asked: HashMap::new(),
            quality: PeerQuality::default(),
            allocation: Allocation::default(),
            caps: Caps::default(),
            timeout: now,
        }
    }
}

#[derive(Default)]
pub(super) struct Peers {
    peers: HashMap<PeerId, Peer>,
    next: PeerId,
    timers: BTreeSet<(Instant, PeerId)>,
}

impl Peers {
    /// Adds a peer (a new one, or one that moved here); returns its id.
    pub(super) fn insert(&mut self, peer: Peer) -> PeerId {
        self.next += 1;
        let id = self.next;
        self.timers.insert((peer.timeout, id));
        self.peers.insert(id, peer);
        id
    }

    pub(super) fn remove(&mut self, id: PeerId) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        self.timers.remove(&(peer.timeout, id));
        Some(peer)
    }

    pub(super) fn get(&self, id: PeerId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: PeerId) -> Option<&mut Peer> {
        self.peers.get_mut(&id)
    }

    /// The peer's `Rtc` said when it next needs a timeout.
    pub(super) fn set_timeout(&mut self, id: PeerId, at: Instant) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.timeout != at {
            self.timers.remove(&(peer.timeout, id));
            self.timers.insert((at, id));
            peer.timeout = at;
        }
    }

    /// Packets were written to the peer's send streams at `now`. str0m sends written packets
    /// at the connection's next timeout input, so the peer is made due at `now` (unless it is
    /// due earlier): the engine's next [`Peers::due`] runs it once, however many packets were
    /// written to it meanwhile (a whole batch of received datagrams' worth).
    pub(super) fn written(&mut self, id: PeerId, now: Instant) {
        if self.peers.get(&id).is_some_and(|peer| peer.timeout > now) {
            self.set_timeout(id, now);
        }
    }

    /// The peers whose deadline is at or before `now`, earliest first.
    pub(super) fn due(&self, now: Instant) -> Vec<PeerId> {
        self.timers
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The earliest deadline of any peer.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }

    /// A new peer connection of `device` (its subscribe connection if `subscribe`), with this
    /// process's ICE credentials and the configured candidates, known to `demux` by its ufrag.
    pub(super) fn open(
        &mut self,
        config: &EngineConfig,
        demux: &mut Demux,
        device: DeviceId,
        subscribe: bool,
        kinds: MediaKinds,
        now: Instant,
    ) -> PeerId {
        let bwe = subscribe && config.subscriber_bwe;
        let mut rtc = peer_config(&config.cert, kinds, bwe)
            .set_local_ice_credentials(ice::local_credentials(&config.ice_prefix))
            .build(now);
        // Invariant: the configured public addresses are unicast host addresses (checked when
        // the driver starts), so the candidates are valid.
        for addr in &config.public_addrs {
            if let Ok(c) = Candidate::host(*addr, "udp") {
                rtc.add_local_candidate(c);
            }
        }
        for addr in &config.tcp_addrs {
            let passive = Candidate::builder()
                .tcp()
                .host(*addr)
                .tcptype(TcpType::Passive)
                .build();
            if let Ok(c) = passive {
                rtc.add_local_candidate(c);
            }
        }
        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        let id = self.insert(Peer::new(device, subscribe, rtc, ufrag.clone(), now));
        demux.add_ufrag(id, ufrag);
        id
    }

    /// Closes a peer connection and forgets its paths.
    pub(super) fn close(&mut self, demux: &mut Demux, id: PeerId) {
        if let Some(mut peer) = self.remove(id) {
            peer.rtc.disconnect();
        }
        demux.forget_peer(id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_due_peers_run_and_the_queue_follows_each_deadline() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let now = Instant::now();
        let mut peers = Peers::default();
        let a = peers.insert(Peer::new(
            DeviceId(1),
            false,
            Rtc::new(now),
            "a".into(),
            now,
        ));
        let b = peers.insert(Peer::new(DeviceId(1), true, Rtc::new(now), "b".into(), now));
        peers.set_timeout(a, now + Duration::from_millis(50));
        peers.set_timeout(b, now + Duration::from_millis(10));
        assert_eq!(peers.next_timeout(), Some(now + Duration::from_millis(10)));
        assert_eq!(peers.due(now + Duration::from_millis(20)), vec![b]);
        peers.remove(b);
        assert_eq!(peers.next_timeout(), Some(now + Duration::from_millis(50)));
        assert_eq!(peers.len(), 1);
    }

    #[test]
    fn a_written_peer_is_due_now_unless_it_is_due_earlier() {
        #[allow(clippy::disallowed_methods)] // any instant will do as the test's origin
        let now = Instant::now();
        let mut peers = Peers::default();
        let mut add = |name: &str| {
            peers.insert(Peer::new(
                DeviceId(1),
                true,
                Rtc::new(now),
                name.into(),
                now,
            ))
        };
        let (a, b) = (add("a"), add("b"));
        peers.set_timeout(a, now + Duration::from_millis(40));
        peers.set_timeout(b, now + Duration::from_millis(2));
        let written = now + Duration::from_millis(5);
        peers.written(a, written);
        peers.written(a, written + Duration::from_millis(1));
        peers.written(b, written);
        assert_eq!(
            peers.due(written),
            vec![b, a],
            "a is due when written, b kept its earlier deadline"
        );
        assert_eq!(peers.next_timeout(), Some(now + Duration::from_millis(2)));
        peers.remove(a);
        peers.written(a, written); // a removed peer is ignored
        assert_eq!(peers.due(written), vec![b]);
    }
}
