//! Session endpoints: sessions, membership and subscriptions (Bandwidth operations), plus
//! patchbay's `routes` and whole-session re-wire.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::dto::{
    rewire_changes, CreateSessionRequest, ParticipantView, RewireRequest, RoutesView, SessionView,
    SubscriptionsBody,
};
use super::extract::{OptionalJson, Scope};
use super::{AppState, Error};

/// Create a session.
#[utoipa::path(post, path = "/v1/accounts/{accountId}/sessions", operation_id = "createSession",
    tag = "sessions", params(("accountId" = String, Path)),
    request_body(content = Option<CreateSessionRequest>, description = "optional"),
    responses((status = 200, body = SessionView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody)))]
pub async fn create(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<CreateSessionRequest>,
) -> Result<Json<SessionView>, Error> {
    let tag = CreateSessionRequest::into_tag(body)?;
    let session = state.control.create_session(&scope.account, tag).await?;
    Ok(Json(SessionView::from(&session)))
}

/// Get a session.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}", operation_id = "getSession",
    tag = "sessions", params(("accountId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = SessionView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn get(State(state): State<AppState>, scope: Scope) -> Result<Json<SessionView>, Error> {
    let session = state
        .control
        .session(&scope.account, scope.session()?)
        .await?;
    Ok(Json(SessionView::from(&session)))
}

/// Delete a session; its members leave it.
#[utoipa::path(delete, path = "/v1/accounts/{accountId}/sessions/{sessionId}", operation_id = "deleteSession",
    tag = "sessions", params(("accountId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 204), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn delete(State(state): State<AppState>, scope: Scope) -> Result<StatusCode, Error> {
    state
        .control
        .delete_session(&scope.account, scope.session()?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the members of a session (always 200 with a JSON array).
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants",
    operation_id = "listSessionParticipants", tag = "sessions",
    params(("accountId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = Vec<ParticipantView>), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn members(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<Vec<ParticipantView>>, Error> {
    let members = state
        .control
        .members(&scope.account, scope.session()?)
        .await?;
    Ok(Json(members.iter().map(ParticipantView::from).collect()))
}

/// Add a participant to a session, optionally setting its subscriptions.
///
/// A session holds at most 20 participants (409 beyond). A participant in another session: 409.
/// Re-adding a member is allowed and replaces its subscriptions when a body is given.
#[utoipa::path(put, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants/{participantId}",
    operation_id = "addParticipantToSession", tag = "sessions",
    params(("accountId" = String, Path), ("sessionId" = String, Path), ("participantId" = String, Path)),
    request_body(content = Option<SubscriptionsBody>, description = "optional; empty, `null` and `{}` mean membership only"),
    responses((status = 204), (status = 400, body = super::ErrorBody), (status = 401, body = super::UnauthorizedBody),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn add_member(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<SubscriptionsBody>,
) -> Result<StatusCode, Error> {
    let session = scope.session()?;
    let participant = scope.participant()?;
    let subs = SubscriptionsBody::into_member_subscriptions(body, session)?;
    state
        .control
        .add_member(&scope.account, session, participant, subs)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a participant from a session, with its subscriptions.
#[utoipa::path(delete, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants/{participantId}",
    operation_id = "removeParticipantFromSession", tag = "sessions",
    params(("accountId" = String, Path), ("sessionId" = String, Path), ("participantId" = String, Path)),
    responses((status = 204), (status = 400, body = super::ErrorBody), (status = 401, body = super::UnauthorizedBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<StatusCode, Error> {
    state
        .control
        .remove_member(&scope.account, scope.session()?, scope.participant()?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Get a member's subscriptions (always 200 with a JSON object).
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants/{participantId}/subscriptions",
    operation_id = "getParticipantSubscriptions", tag = "sessions",
    params(("accountId" = String, Path), ("sessionId" = String, Path), ("participantId" = String, Path)),
    responses((status = 200, body = SubscriptionsBody), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn subscriptions(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<SubscriptionsBody>, Error> {
    let subs = state
        .control
        .subscriptions(&scope.account, scope.session()?, scope.participant()?)
        .await?;
    Ok(Json(SubscriptionsBody::from(&subs)))
}

/// Replace a member's subscriptions (full replace; no body clears them).
#[utoipa::path(put, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants/{participantId}/subscriptions",
    operation_id = "updateParticipantSubscriptions", tag = "sessions",
    params(("accountId" = String, Path), ("sessionId" = String, Path), ("participantId" = String, Path)),
    request_body(content = Option<SubscriptionsBody>, description = "optional; empty, `null` and `{}` clear all subscriptions"),
    responses((status = 204), (status = 400, body = super::ErrorBody), (status = 401, body = super::UnauthorizedBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn set_subscriptions(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<SubscriptionsBody>,
) -> Result<StatusCode, Error> {
    let session = scope.session()?;
    let subs = body.unwrap_or_default().into_domain(session)?;
    state
        .control
        .set_subscriptions(&scope.account, session, &[(scope.participant()?, subs)])
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// patchbay: re-wire several members of a session at once (all or nothing).
///
/// The body maps participant ids to their new subscriptions; members not named keep theirs.
#[utoipa::path(put, path = "/v1/accounts/{accountId}/sessions/{sessionId}/subscriptions",
    operation_id = "rewireSession", tag = "patchbay",
    params(("accountId" = String, Path), ("sessionId" = String, Path)),
    request_body(content = std::collections::BTreeMap<String, SubscriptionsBody>),
    responses((status = 204), (status = 400, body = super::ErrorBody), (status = 401, body = super::UnauthorizedBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn rewire(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<RewireRequest>,
) -> Result<StatusCode, Error> {
    let session = scope.session()?;
    let changes = rewire_changes(body, session)?;
    state
        .control
        .set_subscriptions(&scope.account, session, &changes)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// patchbay: the session's compiled forwarding table: for each member, whom it receives, by
/// which rule, and which streams are forwarded.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}/routes",
    operation_id = "getSessionRoutes", tag = "patchbay",
    params(("accountId" = String, Path), ("sessionId" = String, Path)),
    responses((status = 200, body = RoutesView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn routes(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<RoutesView>, Error> {
    let session = scope.session()?;
    let (members, table) = state.control.routes(&scope.account, session).await?;
    Ok(Json(RoutesView::new(session, &members, &table)))
}
