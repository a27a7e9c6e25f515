//! patchbay: `GET …/sessions/{s}/activeSpeaker`, the session's dominant speaker (issue 21,
//! step 5) as the process answering knows it, and its wire shape. How it is decided is in the
//! README ("Who is speaking").

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::Scope;
use super::{AppState, Error};
use crate::control::SessionSpeaker;
use crate::domain::SessionId;

/// A session's dominant speaker.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSpeakerView {
    pub session_id: String,
    /// The dominant speaker; `null` until someone has spoken in the session on this process
    /// (silence keeps the last speaker: it is never reset to `null`).
    pub participant_id: Option<String>,
    /// Since when `participantId` is the dominant speaker, epoch milliseconds.
    pub since: Option<i64>,
    /// The speaker is on a phone (the SIP bridge); `null` with no speaker.
    pub phone: Option<bool>,
    /// The session is hosted by another process of the cluster (the speaker fields are then
    /// `null`): ask that one.
    pub hosted_elsewhere: bool,
}

impl ActiveSpeakerView {
    /// The view of what control answered.
    pub fn new(session: SessionId, s: &SessionSpeaker) -> ActiveSpeakerView {
        ActiveSpeakerView {
            session_id: session.to_string(),
            participant_id: s.speaker.map(|s| s.participant.to_string()),
            since: s.speaker.map(|s| s.since_ms),
            phone: s.speaker.map(|s| s.phone),
            hosted_elsewhere: s.hosted_elsewhere,
        }
    }
}

/// patchbay: the session's dominant speaker, from the audio levels of its browsers (RFC 6464
/// header extension) and phones (measured by the SIP bridge). Kept in the memory of the
/// process hosting the session.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}/activeSpeaker",
    operation_id = "getActiveSpeaker", tag = "patchbay",
    params(("accountId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = ActiveSpeakerView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<ActiveSpeakerView>, Error> {
    let session = scope.session()?;
    let speaker = state
        .control
        .active_speaker(&scope.account, session)
        .await?;
    Ok(Json(ActiveSpeakerView::new(session, &speaker)))
}
