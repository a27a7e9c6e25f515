//! Wire shapes of the REST API (camelCase JSON), private to the adapter, and their
//! conversions to and from domain types. Requests are parsed leniently where Bandwidth's
//! clients need it (absent and `null` alike; the read-only fields of Bandwidth's models, which
//! the SDKs' request types carry, accepted when empty) and strictly everywhere else: an unknown
//! field is refused (see `extract::parse_optional_json`) and every conversion error names its
//! field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::parse_optional_json;
use super::{BodyError, Error};
use crate::control::NewParticipant;
use crate::domain::{
    CallbackUrl, DeviceApiVersion, DomainError, MediaKind, MediaKinds, Participant, ParticipantId,
    ParticipantSubscription, Session, SessionId, StreamAlias, Subscriptions, Tag,
    MAX_SESSION_MEMBERS,
};
use crate::forwarding::{Cause, ForwardingTable};

/// Most entries a `participants` subscription list may have.
pub const MAX_SUBSCRIPTION_ENTRIES: usize = 100;

/// A read-only field of Bandwidth's models in a request body: both server SDKs type the body
/// of create-participant as the full `Participant` (and create-session as `Session`), so a
/// client may send these fields. Accepted when absent, `null` or empty (`""`, `[]`, `{}`);
/// with a value it is refused, because nothing here would honour it.
#[derive(Debug, Default)]
pub struct ReadOnlyField {
    /// Whether the value was empty.
    empty: bool,
}

impl<'de> Deserialize<'de> for ReadOnlyField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let empty = match &value {
            serde_json::Value::Null => true,
            serde_json::Value::String(s) => s.is_empty(),
            serde_json::Value::Array(a) => a.is_empty(),
            serde_json::Value::Object(o) => o.is_empty(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => false,
        };
        Ok(ReadOnlyField { empty })
    }
}

/// Refuses a read-only field that carries a value, saying where that value is set instead.
fn refuse_read_only(
    field: &'static str,
    value: Option<&ReadOnlyField>,
    instead: &str,
) -> Result<(), DomainError> {
    match value {
        Some(v) if !v.empty => Err(DomainError::new(
            field,
            format!("is read-only here; {instead}"),
        )),
        _ => Ok(()),
    }
}

/// Body of `POST …/participants`. Unknown fields are refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateParticipantRequest {
    /// Where lifecycle webhooks go (absolute http(s) URL).
    pub callback_url: Option<String>,
    /// Media kinds the participant may publish; default `["AUDIO","VIDEO"]`.
    #[schema(value_type = Option<Vec<String>>, example = json!(["AUDIO", "VIDEO"]))]
    pub publish_permissions: Option<Vec<String>>,
    /// Free label, at most 50 characters.
    pub tag: Option<String>,
    /// `"V3"` (case-insensitive; `"V2"` accepted and echoed, tokens are always v3).
    pub device_api_version: Option<String>,
    /// Read-only (assigned by the server): accepted only when empty.
    #[schema(ignore)]
    pub id: Option<ReadOnlyField>,
    /// Read-only (set by adding the participant to a session): accepted only when empty.
    #[schema(ignore)]
    pub sessions: Option<ReadOnlyField>,
    /// Read-only (set with the session's subscription calls): accepted only when empty.
    #[schema(ignore)]
    pub subscriptions: Option<ReadOnlyField>,
}

impl TryFrom<CreateParticipantRequest> for NewParticipant {
    type Error = DomainError;

    fn try_from(r: CreateParticipantRequest) -> Result<Self, DomainError> {
        refuse_read_only("id", r.id.as_ref(), "the server assigns a participant's id")?;
        refuse_read_only(
            "sessions",
            r.sessions.as_ref(),
            "add the participant with PUT …/sessions/{sessionId}/participants/{participantId}",
        )?;
        refuse_read_only(
            "subscriptions",
            r.subscriptions.as_ref(),
            "set them with PUT …/sessions/{sessionId}/participants/{participantId}/subscriptions \
             (or in the body that adds the participant to the session)",
        )?;
        Ok(NewParticipant {
            callback_url: r
                .callback_url
                .as_deref()
                .map(CallbackUrl::parse)
                .transpose()?,
            publish_permissions: r
                .publish_permissions
                .map(|v| {
                    v.iter()
                        .map(|k| MediaKind::parse(k))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .map(MediaKinds::from_kinds),
            tag: r.tag.as_deref().map(Tag::parse).transpose()?,
            device_api_version: r
                .device_api_version
                .as_deref()
                .map(DeviceApiVersion::parse)
                .transpose()?,
        })
    }
}

/// A participant as the API shows it (no token).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[schema(example = json!(["AUDIO", "VIDEO"]))]
    pub publish_permissions: Vec<String>,
    /// The session it belongs to, if any (capped to one).
    pub sessions: Vec<String>,
    pub subscriptions: SubscriptionsBody,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[schema(example = "V3")]
    pub device_api_version: String,
}

impl From<&Participant> for ParticipantView {
    fn from(p: &Participant) -> Self {
        ParticipantView {
            id: p.id.to_string(),
            callback_url: p.callback_url.as_ref().map(|c| c.as_str().to_owned()),
            publish_permissions: p
                .publish_permissions
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            sessions: p.session.iter().map(ToString::to_string).collect(),
            subscriptions: SubscriptionsBody::from(&p.subscriptions),
            tag: p.tag.as_ref().map(|t| t.as_str().to_owned()),
            device_api_version: p.device_api_version.as_str().to_owned(),
        }
    }
}

/// Response of `POST …/participants`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreateParticipantResponse {
    pub participant: ParticipantView,
    /// The participant's device token (JWT), for the browser SDK or the SIP `User-To-User` header.
    pub token: String,
}

/// Body of `POST …/sessions`. Unknown fields are refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    /// Free label, at most 50 characters.
    pub tag: Option<String>,
    /// Read-only (assigned by the server): accepted only when empty.
    #[schema(ignore)]
    pub id: Option<ReadOnlyField>,
}

impl CreateSessionRequest {
    /// The session's tag (no body or no `tag`: none).
    pub fn into_tag(body: Option<Self>) -> Result<Option<Tag>, DomainError> {
        let Some(body) = body else { return Ok(None) };
        refuse_read_only("id", body.id.as_ref(), "the server assigns a session's id")?;
        body.tag.as_deref().map(Tag::parse).transpose()
    }
}

/// A session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

impl From<&Session> for SessionView {
    fn from(s: &Session) -> Self {
        SessionView {
            id: s.id.to_string(),
            tag: s.tag.as_ref().map(|t| t.as_str().to_owned()),
        }
    }
}

/// Subscription rules. A non-empty `participants` list overrides `sessionId`; `sessionId` alone
/// subscribes to every other member of the session; `{}` subscribes to nothing. Unknown fields
/// are refused.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<ParticipantSubscriptionBody>>,
}

/// A subscription to one publisher, optionally narrowed to stream aliases. Unknown fields are
/// refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ParticipantSubscriptionBody {
    pub participant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_aliases: Option<Vec<String>>,
}

impl SubscriptionsBody {
    pub fn is_empty(&self) -> bool {
        self.session_id.is_none() && self.participants.is_none()
    }

    /// The subscriptions of an add-member body: none (membership only) when the body is
    /// absent or `{}`, else the rules for the session in the path.
    pub fn into_member_subscriptions(
        body: Option<Self>,
        path_session: SessionId,
    ) -> Result<Option<Subscriptions>, DomainError> {
        body.filter(|b| !b.is_empty())
            .map(|b| b.into_domain(path_session))
            .transpose()
    }

    /// The domain rules, for the session in the path (a different `sessionId` is refused).
    pub fn into_domain(self, path_session: SessionId) -> Result<Subscriptions, DomainError> {
        let session_id = self
            .session_id
            .as_deref()
            .map(|s| {
                let id = SessionId::parse(s)?;
                if id != path_session {
                    return Err(DomainError::new(
                        "sessionId",
                        format!("{id} does not match the session in the path ({path_session})"),
                    ));
                }
                Ok(id)
            })
            .transpose()?;
        let list = self.participants.unwrap_or_default();
        if list.len() > MAX_SUBSCRIPTION_ENTRIES {
            return Err(DomainError::new(
                "participants",
                format!(
                    "has {} entries; at most {MAX_SUBSCRIPTION_ENTRIES} are allowed",
                    list.len()
                ),
            ));
        }
        let participants = list
            .into_iter()
            .map(|p| {
                Ok(ParticipantSubscription {
                    participant: ParticipantId::parse(&p.participant_id)?,
                    stream_aliases: p
                        .stream_aliases
                        .unwrap_or_default()
                        .iter()
                        .map(|a| StreamAlias::parse(a))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, DomainError>>()?;
        Subscriptions::new(session_id, participants)
    }
}

impl From<&Subscriptions> for SubscriptionsBody {
    fn from(s: &Subscriptions) -> Self {
        SubscriptionsBody {
            session_id: s.session_id.map(|id| id.to_string()),
            participants: (!s.participants.is_empty()).then(|| {
                s.participants
                    .iter()
                    .map(|p| ParticipantSubscriptionBody {
                        participant_id: p.participant.to_string(),
                        stream_aliases: (!p.stream_aliases.is_empty()).then(|| {
                            p.stream_aliases
                                .iter()
                                .map(|a| a.as_str().to_owned())
                                .collect()
                        }),
                    })
                    .collect()
            }),
        }
    }
}

/// Response of `GET …/sessions/{sessionId}/routes`: the compiled forwarding table.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutesView {
    pub session_id: String,
    /// One entry per member, in participant id order.
    pub subscribers: Vec<SubscriberRoutes>,
}

/// What one member receives.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberRoutes {
    pub participant_id: String,
    /// The publishers it is wired to, whether or not they publish right now.
    pub receives: Vec<PublisherRoutes>,
}

/// One publisher a subscriber is wired to, the rule that did it, and the streams forwarded.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublisherRoutes {
    pub publisher_id: String,
    /// `session` (subscribed to the whole session), `participant` (listed the publisher), or
    /// `streamAlias` (listed the publisher with aliases).
    #[schema(value_type = String, example = "session")]
    pub cause: Cause,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stream_aliases: Vec<String>,
    /// Streams forwarded now (empty until the publisher publishes).
    pub streams: Vec<StreamRoute>,
}

/// A forwarded stream.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamRoute {
    pub stream_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[schema(example = json!(["AUDIO", "VIDEO"]))]
    pub media_types: Vec<String>,
}

impl RoutesView {
    pub fn new(session: SessionId, members: &[Participant], table: &ForwardingTable) -> Self {
        let mut by_subscriber: BTreeMap<ParticipantId, Vec<PublisherRoutes>> =
            members.iter().map(|m| (m.id, Vec::new())).collect();
        for (key, link) in &table.links {
            let streams = table
                .routes
                .iter()
                .filter(|(k, _)| k.subscriber == key.subscriber && k.publisher == key.publisher)
                .map(|(k, r)| StreamRoute {
                    stream_id: k.stream.to_string(),
                    alias: r.alias.as_ref().map(|a| a.as_str().to_owned()),
                    media_types: r.kinds.iter().map(|k| k.as_str().to_owned()).collect(),
                })
                .collect();
            by_subscriber
                .entry(key.subscriber)
                .or_default()
                .push(PublisherRoutes {
                    publisher_id: key.publisher.to_string(),
                    cause: link.cause,
                    stream_aliases: link
                        .stream_aliases
                        .iter()
                        .map(|a| a.as_str().to_owned())
                        .collect(),
                    streams,
                });
        }
        RoutesView {
            session_id: session.to_string(),
            subscribers: by_subscriber
                .into_iter()
                .map(|(id, receives)| SubscriberRoutes {
                    participant_id: id.to_string(),
                    receives,
                })
                .collect(),
        }
    }
}

/// Body of `PUT …/sessions/{sessionId}/subscriptions`: new rules per member, applied at once.
/// Members not named keep their rules.
pub type RewireRequest = BTreeMap<String, SubscriptionsBody>;

/// The changes a re-wire body asks for, for the session in the path: a body is required, and
/// names at most a session's worth of members.
pub fn rewire_changes(
    body: Option<RewireRequest>,
    path_session: SessionId,
) -> Result<Vec<(ParticipantId, Subscriptions)>, Error> {
    let body = body.ok_or(BodyError::Missing(
        "a map of participantId to subscriptions",
    ))?;
    if body.len() > MAX_SESSION_MEMBERS {
        return Err(BodyError::TooManyParticipants {
            given: body.len(),
            max: MAX_SESSION_MEMBERS,
        }
        .into());
    }
    let changes = body
        .into_iter()
        .map(|(id, subs)| Ok((ParticipantId::parse(&id)?, subs.into_domain(path_session)?)))
        .collect::<Result<Vec<_>, DomainError>>()?;
    Ok(changes)
}

/// A REST endpoint that takes a JSON body, for [`parse_body`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `POST …/participants`.
    CreateParticipant,
    /// `POST …/sessions`.
    CreateSession,
    /// `PUT …/sessions/{sessionId}/participants/{participantId}`.
    AddMember,
    /// `PUT …/sessions/{sessionId}/participants/{participantId}/subscriptions`.
    SetSubscriptions,
    /// `PUT …/sessions/{sessionId}/subscriptions`.
    Rewire,
}

/// Parses `bytes` as the body of `kind`'s endpoint, for a request on `path_session`, the way
/// its handler does (extraction, then conversion to domain types), stopping before control.
/// Exposed for the fuzz targets only.
#[doc(hidden)]
pub fn parse_body(kind: BodyKind, path_session: SessionId, bytes: &[u8]) -> Result<(), Error> {
    match kind {
        BodyKind::CreateParticipant => {
            let body = parse_optional_json::<CreateParticipantRequest>(bytes)?;
            NewParticipant::try_from(body.unwrap_or_default())?;
        }
        BodyKind::CreateSession => {
            CreateSessionRequest::into_tag(parse_optional_json(bytes)?)?;
        }
        BodyKind::AddMember => {
            SubscriptionsBody::into_member_subscriptions(
                parse_optional_json(bytes)?,
                path_session,
            )?;
        }
        BodyKind::SetSubscriptions => {
            let body = parse_optional_json::<SubscriptionsBody>(bytes)?;
            body.unwrap_or_default().into_domain(path_session)?;
        }
        BodyKind::Rewire => {
            rewire_changes(parse_optional_json(bytes)?, path_session)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fuzz target checks, on a few known bodies: parsed as the handlers parse them,
    /// refused with a 400.
    #[test]
    fn parse_body_is_the_handlers_parsing() {
        let session = SessionId::random();
        let status = |kind, body: &str| {
            parse_body(kind, session, body.as_bytes())
                .err()
                .map(|e| e.status().as_u16())
        };
        assert_eq!(status(BodyKind::CreateParticipant, ""), None);
        assert_eq!(
            status(BodyKind::CreateParticipant, r#"{"tag":"a\u0000b"}"#),
            Some(400)
        );
        assert_eq!(status(BodyKind::CreateSession, r#"{"tag":5}"#), Some(400));
        assert_eq!(status(BodyKind::AddMember, "{}"), None);
        let other = SessionId::random();
        let foreign = format!(r#"{{"sessionId":"{other}"}}"#);
        assert_eq!(status(BodyKind::AddMember, &foreign), Some(400));
        assert_eq!(status(BodyKind::SetSubscriptions, &foreign), Some(400));
        assert_eq!(status(BodyKind::Rewire, "null"), Some(400));
        assert_eq!(status(BodyKind::Rewire, r#"{"x":{}}"#), Some(400));
        assert_eq!(status(BodyKind::Rewire, "{}"), None);
    }
}
