//! Extractors: the authenticated account scope of a request (HTTP Basic, with failed attempts
//! rate-limited by [`AuthFailures`]) and lenient JSON bodies.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::{header, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::de::DeserializeOwned;

use super::auth_limit::{AuthFailures, TooManyFailures};
use super::error::AuthFailure;
use super::{AppState, BodyError, Error, ErrorBody};
use crate::domain::{AccountId, DomainError, ParticipantId, SessionId};

/// The account the request acts for (authenticated with HTTP Basic and matching the
/// `{accountId}` of the path) and the typed ids of the path.
#[derive(Debug, Clone)]
pub struct Scope {
    pub account: AccountId,
    session: Option<Result<SessionId, DomainError>>,
    participant: Option<Result<ParticipantId, DomainError>>,
}

impl Scope {
    /// The `{sessionId}` of the path (routes that have one).
    pub fn session(&self) -> Result<SessionId, Error> {
        match &self.session {
            Some(Ok(id)) => Ok(*id),
            Some(Err(e)) => Err(e.clone().into()),
            None => Err(Error::RouteWithout("sessionId")),
        }
    }

    /// The `{participantId}` of the path (routes that have one).
    pub fn participant(&self) -> Result<ParticipantId, Error> {
        match &self.participant {
            Some(Ok(id)) => Ok(*id),
            Some(Err(e)) => Err(e.clone().into()),
            None => Err(Error::RouteWithout("participantId")),
        }
    }
}

/// Why a request gets no [`Scope`]: an API error, or too many failed authentications.
#[derive(Debug)]
pub enum ScopeRejection {
    /// 401, 400 for the path, 5xx for the store.
    Api(Error),
    /// 429 with `Retry-After`.
    TooManyFailures(TooManyFailures),
}

impl From<Error> for ScopeRejection {
    fn from(e: Error) -> Self {
        ScopeRejection::Api(e)
    }
}

impl IntoResponse for ScopeRejection {
    fn into_response(self) -> Response {
        match self {
            ScopeRejection::Api(e) => e.into_response(),
            ScopeRejection::TooManyFailures(t) => {
                let message = format!(
                    "too many failed authentication attempts; retry after {} seconds",
                    t.retry_after_secs
                );
                // The request's own id: the body, the x-request-id header and the log line
                // name the same one.
                let request_id = super::error::current_request_id();
                let body = Json(ErrorBody {
                    error: message.clone(),
                    request_id: request_id.clone(),
                });
                let retry_after = t.retry_after_secs.to_string();
                let mut response = (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after)],
                    body,
                )
                    .into_response();
                response.extensions_mut().insert(super::error::ClientFault {
                    request_id: Some(request_id),
                    reason: message,
                });
                response
            }
        }
    }
}

impl FromRequestParts<AppState> for Scope {
    type Rejection = ScopeRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, ScopeRejection> {
        // Failed attempts are counted when the server installed the counters; the source
        // address is known when it serves with connect info (else: per username only).
        let failures = parts.extensions.get::<AuthFailures>().cloned();
        let source = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(f) = &failures {
            f.check_address(source)
                .map_err(ScopeRejection::TooManyFailures)?;
        }
        let (username, password) =
            basic_credentials(parts).ok_or(Error::Unauthorized(AuthFailure::NoCredentials))?;
        let account = match state.control.authenticate(&username, &password).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                if let Some(f) = &failures {
                    f.failed(source, &username)
                        .map_err(ScopeRejection::TooManyFailures)?;
                }
                return Err(Error::Unauthorized(AuthFailure::WrongCredentials).into());
            }
            Err(e) => return Err(Error::from(e).into()),
        };
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(Error::from)?;
        let mut scope = Scope {
            account,
            session: None,
            participant: None,
        };
        for (key, value) in &params {
            match key {
                // Credentials only act for their own account.
                "account_id" if value != scope.account.as_str() => {
                    return Err(Error::Unauthorized(AuthFailure::OtherAccount).into())
                }
                "session_id" => scope.session = Some(SessionId::parse(value)),
                "participant_id" => scope.participant = Some(ParticipantId::parse(value)),
                _ => {}
            }
        }
        Ok(scope)
    }
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// An optional JSON body: empty, whitespace-only or `null` bodies are `None` (the Python SDK
/// sends no body at all for `None`). Malformed JSON and wrong types are 400s naming the field.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                BodyError::TooLarge {
                    limit: super::MAX_BODY_BYTES,
                }
            }
            other => BodyError::Unreadable(other),
        })?;
        parse_optional_json(&bytes).map(OptionalJson)
    }
}

/// serde's message for a field a type does not have (``unknown field `x`, expected one of `a`,
/// `b` ``, or ``expected `a` ``, or `there are no fields`), taken apart: the field and the
/// known ones. A unit test pins the wording, so a serde that words it otherwise fails there.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let (field, rest) = message.strip_prefix("unknown field `")?.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), known))
}

/// The known field a mistyped one most resembles: the same letters in another case, else the
/// most similar by Jaro-Winkler when it is close enough to be a typo.
fn closest(field: &str, known: &[String]) -> Option<String> {
    let lower = field.to_lowercase();
    if let Some(k) = known.iter().find(|k| k.to_lowercase() == lower) {
        return Some(k.clone());
    }
    known
        .iter()
        .map(|k| (strsim::jaro_winkler(&lower, &k.to_lowercase()), k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k.clone())
}

/// Parses a request body per [`OptionalJson`]'s rules.
pub fn parse_optional_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<Option<T>, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| BodyError::NotUtf8)?;
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(None);
    }
    let de = &mut serde_json::Deserializer::from_str(trimmed);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            BodyError::NotJson(inner)
        } else if let Some((field, known)) = unknown_field(&inner.to_string()) {
            // serde_path_to_error's path ends with the unknown field itself: keep its object's.
            let object = path
                .strip_suffix(field.as_str())
                .and_then(|p| p.strip_suffix('.'))
                .unwrap_or(".")
                .to_owned();
            BodyError::UnknownField {
                path: object,
                suggestion: closest(&field, &known),
                field,
                known,
            }
        } else if path == "." {
            BodyError::Shape(inner)
        } else {
            BodyError::Field { path, error: inner }
        }
    })?;
    // One JSON value, nothing after it.
    de.end().map_err(BodyError::NotJson)?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::super::dto::{CreateParticipantRequest, CreateSessionRequest, SubscriptionsBody};
    use super::*;
    use crate::control::NewParticipant;

    fn message<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> String {
        parse_optional_json::<T>(body.as_bytes())
            .expect_err("the body must be refused")
            .to_string()
    }

    #[test]
    fn a_mistyped_field_is_named_with_the_one_it_resembles() {
        assert_eq!(
            message::<CreateParticipantRequest>(
                r#"{"callbackURL": "https://example.com/cb", "publishPermissions": ["AUDIO"]}"#
            ),
            "unknown field `callbackURL`; did you mean `callbackUrl`?"
        );
        assert_eq!(
            message::<CreateParticipantRequest>(r#"{"publishPermission": ["AUDIO"]}"#),
            "unknown field `publishPermission`; did you mean `publishPermissions`?"
        );
        assert_eq!(
            message::<CreateSessionRequest>(r#"{"tags": "x"}"#),
            "unknown field `tags`; did you mean `tag`?"
        );
    }

    #[test]
    fn a_nested_unknown_field_says_where_it_is() {
        let m = message::<SubscriptionsBody>(
            r#"{"participants": [{"participantId": "p", "streamAlias": ["cam"]}]}"#,
        );
        assert_eq!(
            m,
            "participants[0]: unknown field `streamAlias`; did you mean `streamAliases`?"
        );
    }

    #[test]
    fn a_field_like_none_lists_the_known_ones() {
        let m = message::<CreateSessionRequest>(r#"{"colour": "blue"}"#);
        assert_eq!(m, "unknown field `colour`; known fields: `tag`, `id`");
    }

    #[test]
    fn read_only_fields_of_the_sdk_models_pass_when_empty_and_are_refused_with_a_value() {
        let empty = r#"{"id": null, "sessions": [], "subscriptions": {}, "tag": "a"}"#;
        let body = parse_optional_json::<CreateParticipantRequest>(empty.as_bytes())
            .expect("empty read-only fields are accepted")
            .expect("a body");
        NewParticipant::try_from(body).expect("and ignored");
        for (body, field) in [
            (r#"{"id": "p-1"}"#, "id"),
            (r#"{"sessions": ["s"]}"#, "sessions"),
            (r#"{"subscriptions": {"sessionId": "s"}}"#, "subscriptions"),
        ] {
            let parsed = parse_optional_json::<CreateParticipantRequest>(body.as_bytes())
                .expect("well-formed")
                .expect("a body");
            let err = NewParticipant::try_from(parsed).expect_err(body);
            assert!(err.to_string().starts_with(field), "{body}: {err}");
            assert!(err.to_string().contains("read-only"), "{body}: {err}");
        }
        let session =
            parse_optional_json::<CreateSessionRequest>(br#"{"id": "s-1"}"#).expect("well-formed");
        assert!(CreateSessionRequest::into_tag(session).is_err());
    }

    #[test]
    fn serde_words_unknown_fields_as_this_parser_expects() {
        assert_eq!(
            unknown_field("unknown field `x`, expected one of `a`, `bb` at line 1 column 4"),
            Some(("x".to_owned(), vec!["a".to_owned(), "bb".to_owned()]))
        );
        assert_eq!(
            unknown_field("unknown field `x`, expected `a` at line 1 column 4"),
            Some(("x".to_owned(), vec!["a".to_owned()]))
        );
        assert_eq!(
            unknown_field("unknown field `x`, there are no fields"),
            Some(("x".to_owned(), vec![]))
        );
        assert_eq!(unknown_field("invalid type: string, expected u8"), None);
        assert_eq!(closest("tagg", &["tag".to_owned()]), Some("tag".to_owned()));
        assert_eq!(closest("colour", &["tag".to_owned()]), None);
    }
}
