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
    pub endpoint_id: String,
    pub media_types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    pub participant_id: String,
}

/// The result of `offerSdp`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishAnswer {
    pub sdp_answer: String,
    pub endpoint_id: String,
    pub stream_metadata: BTreeMap<String, StreamMetadata>,
}

/// The params of the `sdpOffer` notification.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeOffer {
    pub sdp_offer: String,
    pub sdp_revision: u64,
    pub endpoint_id: String,
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
