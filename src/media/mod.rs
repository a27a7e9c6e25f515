//! The media plane: a Selective Forwarding Unit on `str0m`, sans-IO.
//!
//! [`Engine`] owns every WebRTC peer connection of one shard: per connected device a
//! *publish* connection (the device offers, the engine answers) and a *subscribe* connection
//! (the engine offers what the forwarding table says the device receives, the device answers
//! with `a=setup:passive`, so the engine is the DTLS client there). Many peers share one UDP
//! socket; datagrams are demultiplexed by a map of remote addresses, then by the ICE ufrag of
//! the first STUN request, never by a scan. A *local device* (a phone call bridged by the SIP
//! runtime) has no peer connection: it publishes one audio stream whose frames its driver
//! writes, and receives the audio frames of its routes as events.
//!
//! ## Parts, and the state each one owns
//! The engine is split by state, not by method: each part owns its maps and exposes verbs;
//! [`Engine`] (in `engine.rs`) coordinates them and owns no map of its own. Its configuration
//! is in `config.rs` ([`EngineConfig`]); the types it hands its driver are in `output.rs`
//! ([`Transmit`], [`EngineEvent`]) and `error.rs` ([`MediaError`]).
//!
//! | part | file | owns |
//! |---|---|---|
//! | `Demux` | `demux.rs` | remote address → peer, ICE ufrag → peer, the paths of each peer |
//! | `Peers` | `peers.rs` | peer id → `str0m::Rtc` (and its device and role), the timer queue; it opens (ICE credentials, candidates) and closes a device's connections |
//! | `Devices` | `devices.rs` | device → participant, permissions and peers; participant → device |
//! | `Publishing` | `publishing.rs` | what each device publishes (streams, m-lines, aliases); it answers a device's publish offer and points the fan-out at what is published, lent the parts it needs per call (`publishing::Parts`) |
//! | `Subscribing` | `subscribing.rs` | each browser device's subscribe negotiation: tracks, mids, revision, the pending offer; it makes the subscribe connection and its offers, takes the answers and says which fan-out targets are negotiated, lent the parts it needs per call (`subscribing::Parts`) |
//! | `LocalDevices` | `local.rs` | each local device's published stream (its frames numbered into packets) and received audio tracks |
//! | `HostedRoutes` | `routes.rs` | the forwarding tables of the sessions given to this engine; participant → session |
//! | `Fanout` | `fanout.rs` | source track → targets (the hot path), target → source (keyframe requests upstream) |
//! | `PeerQuality` | `quality.rs` | per peer connection: its tracks' statistics (str0m's, sampled once a second), its keyframe requests passed on, merged or asked (kept in the `Peer`) |
//! | `Allocation` | `allocation.rs` | per subscribe connection: its estimate, what each m-line is sent, which video is paused for its link (kept in the `Peer`) |
//! | `Caps` | `cap.rs` | per publish connection: the REMB ceiling each video track is held to while it has one viewer (kept in the `Peer`) |
//! | `Relay` | `relay.rs` | the packet path (a peer's output drained, each packet forwarded to its targets, keyframe requests passed upstream, a subscriber's allocation run) with the engine's output queues (transmits, events), its counters and quality samples, and the buffers the hot path reuses; the other parts are lent to it per call (`Parts`) |
//! | (new paths) | `ingress.rs` | nothing: which peer a datagram from an unknown address may open a path to, and the refusal of a check meant for the process this one replaced |
//! | `MovedDevice` | `moving.rs` | a device between two shards' engines: its state taken out of every part of one, put into the other's |
//! | (rebuild) | `rebuild.rs` | nothing: the fan-out rebuilt from scratch, which tests check the incremental one against |
//! | (ICE identity) | `ice.rs` | nothing: the process's ufrag prefix, fresh local credentials, the signed refusal of a check meant for another process |
//! | (keys) | `keys.rs` | nothing: the key types the parts share (`PeerId`, `TrackKey`, `Source`, `Target`, `SourceKey`), so that no part imports another for a name; the parts import each other without a circle |
//! | `MediaCounters` | `counters.rs` | what the engine counts for the metrics (plain integers the driver reads) |
//! | `Speakers` | `speaker.rs` | per hosted session: each publisher's smoothed audio level (RFC 6464, or a phone's measured one) and the dominant speaker |
//! | `Rewrite` | `rewrite.rs` | per subscriber m-line: the origin it carries now, sequence/timestamp offsets, payload-type map (kept in the subscriber's `Peer`) |
//! | `Shard` | `shard.rs` | the device entries of one shard: resume, replacement, reconnect grace, moves, redirects |
//!
//! ## Drive contract
//! The engine has no sockets, clock, threads or tasks. Its driver is the [`Shard`] (itself
//! sans-IO, pumped by `runtime::media`):
//!
//! | input | method | outputs it may produce |
//! |---|---|---|
//! | a datagram | [`Engine::handle_receive`] | transmits, events (media for local devices, `Connected`) |
//! | time passed | [`Engine::handle_timeout`] | transmits, events |
//! | a device connects / leaves / moves | `add_device`, `add_local_device`, `remove_device`, `export_device`, `import_device` | offers, `StreamsChanged`, `LocalSources` |
//! | a device's publish offer / subscribe answer | `handle_publish_offer`, `handle_subscribe_answer` | the answer (returned), offers, `StreamsChanged` |
//! | a phone's audio frame | [`Engine::write_local`] | transmits, `LocalMedia` |
//! | a session's table changed | [`Engine::apply_routes`] (or [`Engine::set_all_routes`] to resync) | offers, `LocalSources` |
//!
//! After a call, or a batch of calls (the datagrams one read of the socket returned), the
//! driver sends every [`Engine::poll_transmit`], handles every [`Engine::poll_event`], and
//! sleeps until [`Engine::poll_timeout`] at the latest, always passing `now`. Packets forwarded
//! to a subscriber leave at its connection's next timeout (str0m sends what was written to a
//! send stream when time next moves forward): forwarding makes the subscriber due now, and the
//! driver's next [`Engine::handle_timeout`] sends all that was written to it since, so a
//! subscriber fed by twenty publishers' packets in one batch is run once, not twenty times.
//!
//! ## The three paths through the engine
//! - **A datagram**: `Engine::handle_receive` → `Demux::lookup` (or, for a new path,
//!   `ingress::new_path`: a STUN request naming a known ufrag and passing that peer's
//!   integrity check) → the peer's `Rtc`
//!   (str0m in RTP mode: SRTP, NACK bookkeeping, repair of retransmissions; no depacketizing)
//!   → `Relay::drain_peer` → for each RTP packet `Relay::forward` →
//!   `Fanout::targets(source)` → for a browser target, the m-line's `Rewrite` (SSRC, sequence
//!   number and timestamp made continuous) and its send stream's `write_rtp` (the payload is
//!   shared, not copied; the subscriber is made due now and its next timeout sends it); for
//!   a phone, a `LocalMedia` event.
//! - **A subscription change**: `Engine::apply_routes(session, diff)` →
//!   `HostedRoutes::apply` (returns the affected subscribers) → for each one
//!   `Engine::renegotiate` → `Subscribing::offer` (one pending offer per device, later
//!   changes folded into the next) or `LocalDevices::set_tracks` → `Subscribing::targets` →
//!   `Fanout::set_targets` (only that subscriber's entries change: O(changes), never a rebuild).
//! - **A phone's audio frame**: `Engine::write_local(device, …)` → `LocalDevices::packet`
//!   numbers it like an RTP packet → `Relay::forward` with the local source: the same
//!   forwarding loop as a browser's packet.
//!
//! ## Packets, not frames
//! The engine forwards each RTP packet as it arrives; nothing is reassembled or held back. Per
//! subscriber m-line, `Rewrite` keeps the outgoing stream continuous across a re-wire, a
//! publisher's reconnect (new SSRC) and moves between shards. Keyframe requests (PLI, FIR where
//! negotiated) from subscribers go to the publisher of their m-line, at most one per track per
//! `KEYFRAME_REQUEST_INTERVAL` (300 ms; requests in between are merged), and one is sent when an
//! m-line switches to a new video origin. Video packets stay in each subscriber's send stream
//! for `VIDEO_RTX_WINDOW` (1 s, at most 500 packets) to answer its NACKs over RTX; the payloads
//! there are shared with every other subscriber; resends may make up to 30 % of what a stream
//! sends (`VIDEO_RTX_RATIO_CAP`) before str0m drops queued ones. Audio is not cached or
//! retransmitted.
//!
//! ## What it forwards
//! Exactly the routes of the forwarding tables it was given: a publisher's stream reaches a
//! subscriber only if a route (subscriber, publisher, stream) exists, and only in the media
//! kinds of that route (the publisher's permissions already applied by `forwarding::compile`).
//! Media a publisher may not publish is refused at negotiation (its m-line is rejected) and
//! never forwarded. When routes change, only the affected subscribers renegotiate.
//!
//! The device-facing JSON (Bandwidth's `offerSdp`/`sdpOffer` shapes) is not here: the engine
//! speaks in domain types ([`PublishAnswer`], [`SubscribeOffer`], [`StreamMetadata`]) and
//! `signaling` renders them.

mod allocation;
mod cap;
mod config;
mod counters;
mod demux;
mod devices;
mod engine;
mod error;
mod fanout;
mod ice;
mod ingress;
mod keys;
mod local;
mod moving;
mod output;
mod peers;
pub mod placement;
mod publishing;
mod quality;
mod rebuild;
mod relay;
mod rewrite;
mod routes;
pub mod shard;
mod speaker;
mod subscribing;

pub use config::EngineConfig;
pub use counters::MediaCounters;
pub use engine::Engine;
pub use error::MediaError;
pub use keys::SourceKey;
pub use moving::MovedDevice;
pub use output::{EngineEvent, Transmit, Transport};
pub use peers::KEYFRAME_REQUEST_INTERVAL;
pub use placement::Placement;
pub use quality::QualitySamples;
pub use relay::{VIDEO_RTX_PACKETS, VIDEO_RTX_WINDOW};
pub use shard::{
    Delivery, DeviceNotice, LocalDownlink, Resumption, Shard, ShardMessage, ShardOutput,
    RECONNECT_GRACE,
};
pub use speaker::SpeakerChange;
pub use subscribing::{OFFER_RETRIES, OFFER_TIMEOUT};

/// One device connection (a device signalling WebSocket, or a phone call), assigned by the
/// runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

/// The vocabulary of a device's negotiations (offers, answers, stream metadata) is the
/// domain's: the device adapter (signaling) renders it without naming the media plane.
pub use crate::domain::{DeclaredStreams, PublishAnswer, StreamMetadata, SubscribeOffer};
