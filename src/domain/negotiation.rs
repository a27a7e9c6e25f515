//! What a device is told about its connections: the answer to its publish offer, the offers
//! for its subscribe connection, and the metadata of each MediaStream in them. The media
//! plane produces these and the device adapter (signaling) renders them in Bandwidth's JSON;
//! both speak this vocabulary, so neither names the other.

use std::collections::BTreeMap;

use super::{MediaKinds, ParticipantId, StreamAlias};

/// The MediaStreams a device declares with its publish offer: msid → its alias, if any.
pub type DeclaredStreams = BTreeMap<String, Option<StreamAlias>>;

/// What the engine says about one MediaStream in an answer or an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMetadata {
    /// The endpoint id of the stream (connection endpoint id, `:`, msid).
    pub endpoint_id: String,
    /// The kinds the stream carries (published, or offered to this subscriber).
    pub kinds: MediaKinds,
    /// The publisher's alias for the stream, if it declared one.
    pub alias: Option<StreamAlias>,
    /// The participant publishing it.
    pub participant: ParticipantId,
}

/// The engine's answer to a device's publish offer.
#[derive(Debug, Clone)]
pub struct PublishAnswer {
    /// The SDP answer to apply on the device's publish connection.
    pub sdp_answer: String,
    /// The endpoint id of the device's publish connection (a UUID minted by the engine, kept
    /// across renegotiations).
    pub endpoint_id: String,
    /// By msid, every declared stream (with no kinds if none of its m-lines was accepted).
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}

/// A server offer for a device's subscribe connection.
#[derive(Debug, Clone)]
pub struct SubscribeOffer {
    /// The SDP offer for the device's subscribe connection.
    pub sdp_offer: String,
    /// Strictly increasing per device.
    pub sdp_revision: u64,
    /// The endpoint id of the device's subscribe connection (a UUID minted by the engine).
    pub endpoint_id: String,
    /// By the MediaStream id the subscriber sees, every stream the offer sends.
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}
