//! [`SubscribeLayout`]: what a device's subscribe connection looks like to the device, the part
//! of a live call that must outlive the process carrying it.
//!
//! Bandwidth's browser SDK keeps one subscribing `RTCPeerConnection` for the life of its
//! instance (its `uniqueId`) and only ever applies offers to it: a later offer must keep every
//! m-line the connection has, in the same order, with the same mids and kinds, and must carry
//! an `sdpRevision` above every one the SDK accepted. A process that never met the device can
//! only send such an offer if it knows that shape, so the media plane reports it after every
//! offer and the store keeps it; a new process rebuilds the connection from it (with its own
//! ICE credentials and DTLS certificate).

use serde::{Deserialize, Serialize};

use super::{DomainError, MediaKind, ParticipantId, StreamId};

/// The ICE credentials a process gave a device's publish connection. A process that replaced
/// it answers that connection's consent checks with an error signed with them (the browser
/// ignores an unsigned one), so the browser drops the dead path at once and the SDK
/// re-offers the connection; see `media::engine`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishCredentials {
    /// The device's participant.
    pub participant: ParticipantId,
    /// The SDK instance (`uniqueId`).
    pub unique_id: String,
    /// The server's ICE username fragment on that connection.
    pub ufrag: String,
    /// The server's ICE password on that connection.
    pub pwd: String,
}

/// A phone call stored for the process that takes it over (see `runtime::phone_records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPhoneCall {
    /// The caller's participant.
    pub participant: ParticipantId,
    /// The call's device name (`sip-…`).
    pub call: String,
    /// The SIP bridge's record of it (JSON).
    pub record: String,
    /// When the record was last written or taken (epoch milliseconds, the writer's clock):
    /// a process takes or ends the call only if it is still as read.
    pub updated_at_ms: i64,
}

/// The shape of one device's subscribe connection, as the device has been offered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeLayout {
    /// The SDK instance (`uniqueId`) whose connection this is: another instance has a
    /// connection of its own and starts afresh.
    pub unique_id: String,
    /// The highest `sdpRevision` offered to it.
    pub revision: u64,
    /// Its m-lines, in order.
    pub lines: Vec<LayoutLine>,
}

/// One m-line of a subscribe connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutLine {
    /// Its `a=mid`, as the device knows it.
    pub mid: String,
    /// What it carries.
    pub content: LineContent,
}

/// What an m-line of a subscribe connection carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineContent {
    /// The SCTP association of the built-in data channels (`m=application`).
    Channels,
    /// One track of one publisher's stream (sending or not).
    Track {
        /// Audio or video.
        kind: MediaKind,
        /// The publisher.
        publisher: ParticipantId,
        /// The publisher's stream.
        stream: StreamId,
        /// The MediaStream id the device sees for that stream (`a=msid` stream part).
        msid: String,
        /// The track id the device sees (`a=msid` track part).
        track_id: String,
        /// Sending (`a=sendonly`) in the offer; otherwise `a=inactive`.
        sending: bool,
    },
}

impl SubscribeLayout {
    /// The layout as stored (JSON).
    pub fn to_json(&self) -> String {
        let wire = WireLayout {
            unique_id: self.unique_id.clone(),
            revision: self.revision,
            lines: self
                .lines
                .iter()
                .map(|l| match &l.content {
                    LineContent::Channels => WireLine {
                        mid: l.mid.clone(),
                        kind: "APPLICATION".into(),
                        publisher: None,
                        stream: None,
                        msid: None,
                        track_id: None,
                        sending: None,
                    },
                    LineContent::Track {
                        kind,
                        publisher,
                        stream,
                        msid,
                        track_id,
                        sending,
                    } => WireLine {
                        mid: l.mid.clone(),
                        kind: kind.as_str().into(),
                        publisher: Some(*publisher),
                        stream: Some(stream.as_str().into()),
                        msid: Some(msid.clone()),
                        track_id: Some(track_id.clone()),
                        sending: Some(*sending),
                    },
                })
                .collect(),
        };
        // Invariant: plain strings, numbers and uuids always serialize.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Parses a stored layout; anything malformed is an error naming the field.
    pub fn from_json(s: &str) -> Result<SubscribeLayout, DomainError> {
        let wire: WireLayout = serde_json::from_str(s)
            .map_err(|e| DomainError::new("layout", format!("not a subscribe layout: {e}")))?;
        let mut lines = Vec::with_capacity(wire.lines.len());
        for l in wire.lines {
            if !is_token(&l.mid, 16) {
                return Err(DomainError::new("mid", format!("{:?} is not a mid", l.mid)));
            }
            let content = match l.kind.as_str() {
                "APPLICATION" => LineContent::Channels,
                "AUDIO" | "VIDEO" => {
                    let missing = |field| DomainError::new(field, "missing on a track line");
                    let msid = l.msid.ok_or_else(|| missing("msid"))?;
                    let track_id = l.track_id.ok_or_else(|| missing("trackId"))?;
                    if !is_token(&msid, 64) || !is_token(&track_id, 64) {
                        return Err(DomainError::new("msid", "not an msid token"));
                    }
                    LineContent::Track {
                        kind: if l.kind == "AUDIO" {
                            MediaKind::Audio
                        } else {
                            MediaKind::Video
                        },
                        publisher: l.publisher.ok_or_else(|| missing("publisher"))?,
                        stream: StreamId::parse(&l.stream.ok_or_else(|| missing("stream"))?)?,
                        msid,
                        track_id,
                        sending: l.sending.unwrap_or(false),
                    }
                }
                other => {
                    return Err(DomainError::new(
                        "kind",
                        format!("{other:?} is not AUDIO, VIDEO or APPLICATION"),
                    ))
                }
            };
            lines.push(LayoutLine {
                mid: l.mid,
                content,
            });
        }
        Ok(SubscribeLayout {
            unique_id: wire.unique_id,
            revision: wire.revision,
            lines,
        })
    }
}

/// An RFC 8830 token of 1 to `max` characters (what an SDP mid or msid part may hold).
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b == b'!'
                || (0x23..=0x27).contains(&b)
                || (0x2a..=0x2b).contains(&b)
                || (0x2d..=0x2e).contains(&b)
                || b.is_ascii_alphanumeric()
                || (0x5e..0x7e).contains(&b)
        })
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLayout {
    unique_id: String,
    revision: u64,
    lines: Vec<WireLine>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireLine {
    mid: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publisher: Option<ParticipantId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    msid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    track_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sending: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SubscribeLayout {
        SubscribeLayout {
            unique_id: "sdk-1".into(),
            revision: 7,
            lines: vec![
                LayoutLine {
                    mid: "0".into(),
                    content: LineContent::Channels,
                },
                LayoutLine {
                    mid: "a1b".into(),
                    content: LineContent::Track {
                        kind: MediaKind::Video,
                        publisher: ParticipantId::random(),
                        stream: StreamId::parse("cam-1").unwrap(),
                        msid: "0f3e".into(),
                        track_id: "video-2".into(),
                        sending: true,
                    },
                },
            ],
        }
    }

    #[test]
    fn a_layout_round_trips_through_its_stored_form() {
        let layout = sample();
        assert_eq!(SubscribeLayout::from_json(&layout.to_json()), Ok(layout));
    }

    #[test]
    fn a_malformed_stored_layout_is_an_error_naming_the_field() {
        assert_eq!(SubscribeLayout::from_json("{").unwrap_err().field, "layout");
        let bad_kind = sample().to_json().replace("VIDEO", "SMELL");
        assert_eq!(
            SubscribeLayout::from_json(&bad_kind).unwrap_err().field,
            "kind"
        );
        let bad_mid = sample().to_json().replace("a1b", "a b");
        assert_eq!(
            SubscribeLayout::from_json(&bad_mid).unwrap_err().field,
            "mid"
        );
    }
}
