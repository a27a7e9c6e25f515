//! The JSON shapes of protocol v3 that carry media (reference §3.3): what a device sends with
//! `offerSdp`, and how the engine's answers and offers are rendered. The media engine speaks
//! in domain types; this module alone knows Bandwidth's field names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rpc::RpcError;
use crate::domain::{MediaKind, StreamAlias};
use crate::media::{self, DeclaredStreams};

/// The metadata a device sends with `offerSdp` (`PublishMetadata`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishMetadata {
    /// `mediaStreams`: by msid, each MediaStream the offer publishes (absent: none).
    #[serde(default)]
    pub media_streams: BTreeMap<String, PublishedStreamMetadata>,
    /// `dataChannels`: by label, the pre-negotiated channels the device opens (absent: none).
    /// Accepted for compatibility; the engine opens its own built-in channels.
    #[serde(default)]
    pub data_channels: BTreeMap<String, DataChannelMetadata>,
}

/// A published MediaStream's metadata as the device declares it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PublishedStreamMetadata {
    /// The publisher's label for the stream, unparsed; [`PublishMetadata::declared_streams`]
    /// validates it.
    pub alias: Option<String>,
}

/// A pre-negotiated data channel the device declares.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelMetadata {
    /// The channel's label, e.g. `__heartbeat__`.
    pub label: String,
    /// `streamId`: the SCTP stream id both sides agreed on out of band.
    pub stream_id: u16,
}

impl PublishMetadata {
    /// The declared MediaStreams with their aliases parsed; an invalid alias is refused.
    pub fn declared_streams(&self) -> Result<DeclaredStreams, RpcError> {
        self.media_streams
            .iter()
            .map(|(msid, meta)| {
                let alias = meta
                    .alias
                    .as_deref()
                    .map(StreamAlias::parse)
                    .transpose()
                    .map_err(|e| {
                        RpcError::new(RpcError::REFUSED, format!("invalid stream alias: {e}"))
                    })?;
                Ok((msid.clone(), alias))
            })
            .collect()
    }
}

/// One stream in an answer or an offer (`StreamMetadata`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamMetadata {
    /// `endpointId`: the connection's endpoint id, `:`, the msid.
    pub endpoint_id: String,
    /// `mediaTypes`: `"AUDIO"` and/or `"VIDEO"`, in that order; empty when nothing of the
    /// stream was accepted.
    pub media_types: Vec<&'static str>,
    /// The publisher's alias for the stream; omitted when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// `participantId`: the publisher, as a hyphenated UUID.
    pub participant_id: String,
}

/// The result of `offerSdp`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishAnswer {
    /// `sdpAnswer`: the engine's SDP answer to the device's publish offer.
    pub sdp_answer: String,
    /// `endpointId`: the id of the device's publish connection.
    pub endpoint_id: String,
    /// `streamMetadata`: by msid, every stream the device declared.
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}

/// The params of the `sdpOffer` notification.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeOffer {
    /// `sdpOffer`: the engine's SDP offer for the device's subscribe connection.
    pub sdp_offer: String,
    /// `sdpRevision`: strictly increasing per device, starting at 1.
    pub sdp_revision: u64,
    /// `endpointId`: the id of the device's subscribe connection.
    pub endpoint_id: String,
    /// `streamMetadata`: by the msid the subscriber sees, every stream the offer sends.
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}

fn render_streams(
    streams: &BTreeMap<String, media::StreamMetadata>,
) -> BTreeMap<String, StreamMetadata> {
    streams
        .iter()
        .map(|(msid, m)| {
            let meta = StreamMetadata {
                endpoint_id: m.endpoint_id.clone(),
                media_types: m.kinds.iter().map(MediaKind::as_str).collect(),
                alias: m.alias.as_ref().map(|a| a.as_str().to_owned()),
                participant_id: m.participant.to_string(),
            };
            (msid.clone(), meta)
        })
        .collect()
}

impl From<&media::PublishAnswer> for PublishAnswer {
    fn from(a: &media::PublishAnswer) -> Self {
        PublishAnswer {
            sdp_answer: a.sdp_answer.clone(),
            endpoint_id: a.endpoint_id.clone(),
            stream_metadata: render_streams(&a.stream_metadata),
        }
    }
}

impl From<&media::SubscribeOffer> for SubscribeOffer {
    fn from(o: &media::SubscribeOffer) -> Self {
        SubscribeOffer {
            sdp_offer: o.sdp_offer.clone(),
            sdp_revision: o.sdp_revision,
            endpoint_id: o.endpoint_id.clone(),
            stream_metadata: render_streams(&o.stream_metadata),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MediaKinds, ParticipantId};

    #[test]
    fn offers_render_bandwidths_field_names() {
        let participant = ParticipantId::random();
        let offer = media::SubscribeOffer {
            sdp_offer: "v=0".into(),
            sdp_revision: 3,
            endpoint_id: "e".into(),
            stream_metadata: BTreeMap::from([(
                "ms".to_owned(),
                media::StreamMetadata {
                    endpoint_id: "e:ms".into(),
                    kinds: MediaKinds::ALL,
                    alias: None,
                    participant,
                },
            )]),
        };
        let json = serde_json::to_value(SubscribeOffer::from(&offer)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sdpOffer": "v=0", "sdpRevision": 3, "endpointId": "e",
                "streamMetadata": {"ms": {"endpointId": "e:ms", "mediaTypes": ["AUDIO", "VIDEO"],
                    "participantId": participant.to_string()}}
            })
        );
    }

    #[test]
    fn an_invalid_alias_is_refused() {
        let meta: PublishMetadata = serde_json::from_value(serde_json::json!({
            "mediaStreams": {"ms": {"alias": "a".repeat(300)}}
        }))
        .unwrap();
        assert_eq!(meta.declared_streams().unwrap_err().code, RpcError::REFUSED);
    }
}
