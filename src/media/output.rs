//! What an engine hands its driver: datagrams to send ([`Transmit`], on a [`Transport`]) and
//! [`EngineEvent`]s (offers, changed streams, connections up, phones' audio, speakers).

use std::net::SocketAddr;
use std::sync::Arc;

use str0m::net::Protocol;

use super::keys::SourceKey;
use super::speaker::SpeakerChange;
use super::{DeviceId, SubscribeOffer};
use crate::domain::{ParticipantId, SubscribeLayout};
use crate::forwarding::PublishedStream;

/// How a packet travels between a device and the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One UDP datagram.
    Udp,
    /// One RFC 4571 frame on an ICE-TCP connection (the driver owns the connection and the
    /// framing; the engine sees the frame's payload).
    Tcp,
}

impl Transport {
    pub(super) fn protocol(self) -> Protocol {
        match self {
            Transport::Udp => Protocol::Udp,
            Transport::Tcp => Protocol::Tcp,
        }
    }
}

/// A datagram to send. `source` is the local (public) address the peer knows us by: the
/// socket to send from. It is the engine's own address except for peers of a device that moved
/// here from another shard, which keep talking to the address they first reached.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The local address to send from (see above).
    pub source: SocketAddr,
    /// The peer's remote address, on the ICE path its connection uses.
    pub destination: SocketAddr,
    /// UDP, or a frame on the ICE-TCP connection from `destination` to `source`.
    pub transport: Transport,
    /// One packet: a STUN message, a DTLS record or an SRTP/SRTCP packet.
    pub contents: Vec<u8>,
}

/// What the engine tells its driver.
#[derive(Debug, Clone)]
pub enum EngineEvent {
    /// Send this offer to the device (the `sdpOffer` notification).
    SubscribeOffer {
        /// The browser device whose subscribe connection the offer is for.
        device: DeviceId,
        /// The offer; its revision is above the device's previous one.
        offer: SubscribeOffer,
        /// The connection's shape as this offer gives it to the device (to store, so that
        /// another process can resume the connection).
        layout: SubscribeLayout,
    },
    /// The streams a device publishes changed (control recompiles the session's routes).
    StreamsChanged {
        /// The device whose publications changed.
        device: DeviceId,
        /// The participant it publishes for.
        participant: ParticipantId,
        /// Everything the device publishes now (empty once it left); replaces the previous list.
        streams: Vec<PublishedStream>,
    },
    /// A device's publish or subscribe connection is up (ICE and DTLS done).
    Connected {
        /// The device the connection belongs to.
        device: DeviceId,
        /// `true` for its subscribe connection, `false` for its publish connection.
        subscribe: bool,
    },
    /// A frame for a local device (a phone): one of the audio tracks it receives.
    LocalMedia {
        /// The local device receiving the frame.
        device: DeviceId,
        /// Which of its received tracks (publisher and stream) the frame belongs to.
        source: SourceKey,
        /// RTP time of the frame (48 kHz for Opus and telephone-event).
        rtp_time: u64,
        /// A telephone-event (RFC 4733) payload rather than Opus.
        dtmf: bool,
        /// The frame's payload, without RTP header; shared with every other target of the frame.
        data: Arc<[u8]>,
    },
    /// The audio tracks a local device receives now (sources absent from it are gone).
    LocalSources {
        /// The local device.
        device: DeviceId,
        /// Every audio track it receives now; replaces the previous list.
        sources: Vec<SourceKey>,
    },
    /// A device's publish connection got new local ICE credentials (its first offer, or an
    /// ICE restart): to store, so that the next process can refuse its checks (see
    /// `EngineConfig::previous_credentials`).
    PublishCredentials {
        /// The browser device.
        device: DeviceId,
        /// The server's ufrag on the connection.
        ufrag: String,
        /// The server's ICE password on the connection.
        pwd: String,
    },
    /// The device answered none of the offers of one change (each offered again after
    /// `OFFER_TIMEOUT`, `OFFER_RETRIES` times): its subscribe side is stuck and the driver
    /// should start it afresh.
    Unanswered {
        /// The device that does not answer.
        device: DeviceId,
    },
    /// A hosted session's dominant speaker changed (see `media::speaker`).
    ActiveSpeaker(SpeakerChange),
}
