//! The media plane: a Selective Forwarding Unit on `str0m`, sans-IO.
//!
//! [`Engine`] owns every WebRTC peer connection of one shard: per connected device a
//! *publish* connection (the device offers, the engine answers) and a *subscribe* connection
//! (the engine offers what the forwarding table says the device receives, the device answers
//! with `a=setup:passive`, so the engine is the DTLS client there). Many peers share one UDP
//! socket; datagrams are demultiplexed by a map of remote addresses, then by the ICE ufrag of
//! the first STUN request, never by a scan.
//!
//! ## Drive contract
//! The engine has no sockets, clock, threads or tasks. Its driver (`runtime::media`):
//! - feeds datagrams with [`Engine::handle_receive`], commands with the `handle_*`/`apply_*`
//!   methods, and the clock with [`Engine::handle_timeout`], always passing `now`;
//! - after every call, sends every [`Engine::poll_transmit`], handles every
//!   [`Engine::poll_event`], and sleeps until [`Engine::poll_timeout`] at the latest.
//!
//! ## What it forwards
//! Exactly the routes of the forwarding tables it was given ([`Engine::apply_routes`]): a
//! publisher's stream reaches a subscriber only if a route (subscriber, publisher, stream)
//! exists, and only in the media kinds of that route (the publisher's permissions already
//! applied by `forwarding::compile`). Media a publisher may not publish is refused at
//! negotiation (its m-line is rejected) and never forwarded. When routes change, only the
//! affected subscribers renegotiate, one pending offer at a time per device; further changes
//! are folded into the next offer.

mod engine;
pub mod placement;
pub mod shard;

pub use engine::{Engine, EngineConfig, EngineEvent, MediaError, MovedDevice, SourceKey, Transmit};
pub use placement::Placement;
pub use shard::{
    Delivery, DeviceNotice, LocalDownlink, Shard, ShardMessage, ShardOutput, RECONNECT_GRACE,
};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One device connection (a device signalling WebSocket), assigned by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

/// The metadata a device sends with `offerSdp` (reference §3.3 `PublishMetadata`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishMetadata {
    #[serde(default)]
    pub media_streams: BTreeMap<String, PublishedStreamMetadata>,
    #[serde(default)]
    pub data_channels: BTreeMap<String, DataChannelMetadata>,
}

/// A published MediaStream's metadata as the device declares it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PublishedStreamMetadata {
    pub alias: Option<String>,
}

/// A pre-negotiated data channel the device declares.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelMetadata {
    pub label: String,
    pub stream_id: u16,
}

/// What the engine says about one stream, in answers and offers (reference §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamMetadata {
    pub endpoint_id: String,
    pub media_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub participant_id: String,
}

/// The engine's answer to a device's `offerSdp`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishAnswer {
    pub sdp_answer: String,
    pub endpoint_id: String,
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}

/// A server offer for a device's subscribe connection (the `sdpOffer` notification).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeOffer {
    pub sdp_offer: String,
    pub sdp_revision: u64,
    pub endpoint_id: String,
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}
