//! Participant endpoints (Bandwidth operations createParticipant, getParticipant,
//! deleteParticipant).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use super::dto::{CreateParticipantRequest, CreateParticipantResponse, ParticipantView};
use super::extract::{OptionalJson, Scope};
use super::{AppState, Error};
use crate::control::NewParticipant;

/// Create a participant and its device token. The response is marked `Cache-Control: no-store`.
#[utoipa::path(post, path = "/v1/accounts/{accountId}/participants", operation_id = "createParticipant",
    tag = "participants", params(("accountId" = String, Path)),
    request_body(content = Option<CreateParticipantRequest>, description = "optional; empty, `null` and `{}` mean defaults"),
    responses((status = 200, body = CreateParticipantResponse), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody)))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<CreateParticipantRequest>,
) -> Result<impl IntoResponse, Error> {
    let new = NewParticipant::try_from(body.unwrap_or_default())?;
    let (participant, token) = state
        .control
        .create_participant(&scope.account, new)
        .await?;
    let body = Json(CreateParticipantResponse {
        participant: ParticipantView::from(&participant),
        token,
    });
    // The token is a credential: no cache on the way may keep a copy.
    Ok(([(header::CACHE_CONTROL, "no-store")], body))
}

/// Get a participant.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/participants/{participantId}", operation_id = "getParticipant",
    tag = "participants", params(("accountId" = String, Path), ("participantId" = String, Path)),
    responses((status = 200, body = ParticipantView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<ParticipantView>, Error> {
    let p = state
        .control
        .participant(&scope.account, scope.participant()?)
        .await?;
    Ok(Json(ParticipantView::from(&p)))
}

/// Delete a participant: it leaves its session and its token stops working.
#[utoipa::path(delete, path = "/v1/accounts/{accountId}/participants/{participantId}", operation_id = "deleteParticipant",
    tag = "participants", params(("accountId" = String, Path), ("participantId" = String, Path)),
    responses((status = 204), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn delete(State(state): State<AppState>, scope: Scope) -> Result<StatusCode, Error> {
    state
        .control
        .delete_participant(&scope.account, scope.participant()?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
