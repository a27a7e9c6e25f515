//! The JSON shapes of protocol v3 that carry media (reference §3.3): what a device sends with
//! `offerSdp`, and how the engine's answers and offers are rendered. The media engine speaks
//! in domain types; this module alone knows Bandwidth's field names. It also owns the bounds
//! on the SDP a device may send ([`check_sdp_limits`]), checked before anything parses it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rpc::RpcError;
use crate::domain::{self, DeclaredStreams};
use crate::domain::{MediaKind, StreamAlias};

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

/// Largest publish offer (`offerSdp`'s `sdpOffer`), in bytes. A browser's offer for audio,
/// video and a data channel is 5 to 10 KiB.
pub const MAX_OFFER_SDP_BYTES: usize = 64 * 1024;

/// Most media sections (`m=` lines) in a publish offer. The offer describes the device's
/// whole publish connection (sections are recycled, never removed), so this is also the most
/// a device can publish at once.
pub const MAX_OFFER_MEDIA_SECTIONS: usize = 64;

/// Largest subscribe answer (`answerSdp`'s `sdpAnswer`), in bytes. An answer has exactly the
/// sections of the server's own offer, which grows with what the device receives (up to 19
/// publishers), so it gets more room than an offer; its section count is bounded by that
/// offer, and the engine refuses an answer that does not match it.
pub const MAX_ANSWER_SDP_BYTES: usize = 256 * 1024;

/// Refuses an `offerSdp` or `answerSdp` request whose SDP exceeds [`MAX_OFFER_SDP_BYTES`] and
/// [`MAX_OFFER_MEDIA_SECTIONS`] (offers) or [`MAX_ANSWER_SDP_BYTES`] (answers), with an
/// `INVALID_PARAMS` error naming the field and the limit. Runs on the raw `params` before any
/// parsing, in time linear in the size already bounded by the frame limit; other methods and
/// params without an SDP string pass (their own parsing refuses them).
pub fn check_sdp_limits(method: &str, params: &Value) -> Result<(), RpcError> {
    let (field, max_bytes, max_sections) = match method {
        "offerSdp" => (
            "sdpOffer",
            MAX_OFFER_SDP_BYTES,
            Some(MAX_OFFER_MEDIA_SECTIONS),
        ),
        "answerSdp" => ("sdpAnswer", MAX_ANSWER_SDP_BYTES, None),
        _ => return Ok(()),
    };
    // By name, or first by position (JSON-RPC allows both).
    let sdp = match params {
        Value::Object(map) => map.get(field),
        Value::Array(items) => items.first(),
        _ => None,
    };
    let Some(Value::String(sdp)) = sdp else {
        return Ok(());
    };
    if sdp.len() > max_bytes {
        return Err(RpcError::new(
            RpcError::INVALID_PARAMS,
            format!(
                "{field} is {} bytes; at most {max_bytes} bytes of SDP are allowed",
                sdp.len()
            ),
        ));
    }
    if let Some(max) = max_sections {
        let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        if sections > max {
            return Err(RpcError::new(
                RpcError::INVALID_PARAMS,
                format!(
                    "{field} has {sections} media sections (m= lines); at most {max} are allowed"
                ),
            ));
        }
    }
    Ok(())
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
    streams: &BTreeMap<String, domain::StreamMetadata>,
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

impl From<&domain::PublishAnswer> for PublishAnswer {
    fn from(a: &domain::PublishAnswer) -> Self {
        PublishAnswer {
            sdp_answer: a.sdp_answer.clone(),
            endpoint_id: a.endpoint_id.clone(),
            stream_metadata: render_streams(&a.stream_metadata),
        }
    }
}

impl From<&domain::SubscribeOffer> for SubscribeOffer {
    fn from(o: &domain::SubscribeOffer) -> Self {
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
    use serde_json::json;

    #[test]
    fn offers_render_bandwidths_field_names() {
        let participant = ParticipantId::random();
        let offer = domain::SubscribeOffer {
            sdp_offer: "v=0".into(),
            sdp_revision: 3,
            endpoint_id: "e".into(),
            stream_metadata: BTreeMap::from([(
                "ms".to_owned(),
                domain::StreamMetadata {
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

    fn offer_with(sections: usize, padding: usize) -> String {
        let mut sdp = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
        for i in 0..sections {
            sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
        }
        sdp.push_str(&"a=x\r\n".repeat(padding / 5));
        sdp
    }

    #[test]
    fn sdp_limits_name_the_field_and_the_limit() {
        let ok = offer_with(MAX_OFFER_MEDIA_SECTIONS, 0);
        assert_eq!(
            check_sdp_limits("offerSdp", &json!({"sdpOffer": ok})),
            Ok(())
        );
        let many = offer_with(MAX_OFFER_MEDIA_SECTIONS + 1, 0);
        let e = check_sdp_limits("offerSdp", &json!({"sdpOffer": many})).unwrap_err();
        assert_eq!(e.code, RpcError::INVALID_PARAMS);
        assert_eq!(
            e.message,
            "sdpOffer has 65 media sections (m= lines); at most 64 are allowed"
        );
        let big = offer_with(1, MAX_OFFER_SDP_BYTES);
        let e = check_sdp_limits("offerSdp", &json!([big])).unwrap_err();
        assert_eq!(e.code, RpcError::INVALID_PARAMS);
        assert!(
            e.message.starts_with("sdpOffer is ")
                && e.message
                    .ends_with("at most 65536 bytes of SDP are allowed"),
            "{}",
            e.message
        );
        // Answers follow the server's own offer: only their size is bounded here.
        let answer = offer_with(200, 0);
        assert_eq!(
            check_sdp_limits("answerSdp", &json!({"sdpAnswer": answer})),
            Ok(())
        );
        let huge = offer_with(1, MAX_ANSWER_SDP_BYTES);
        let e = check_sdp_limits("answerSdp", &json!({"sdpAnswer": huge})).unwrap_err();
        assert!(e.message.starts_with("sdpAnswer is "), "{}", e.message);
        // Other methods and other shapes pass to their own parsing.
        assert_eq!(check_sdp_limits("ping", &json!({"sdpOffer": big})), Ok(()));
        assert_eq!(
            check_sdp_limits("offerSdp", &json!({"sdpOffer": 5})),
            Ok(())
        );
        assert_eq!(check_sdp_limits("offerSdp", &Value::Null), Ok(()));
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
