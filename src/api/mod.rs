//! The REST adapter: Bandwidth's WebRTC call-control API, plus patchbay's extensions.
//!
//! Handlers parse input into domain types (`dto`, `extract`), call [`Control`] and render the
//! result; they hold no SQL and no media logic. Every path is served under `/v1/accounts/…`
//! and `/accounts/…` (the SDKs' custom base URL may or may not include `/v1`). Errors are
//! [`Error`]: JSON bodies as the reference says, never a 500 for a client's mistake; server
//! faults are logged once, by a layer of [`router`] (see `error.rs`).
//!
//! Beyond Bandwidth: `GET …/sessions/{id}/routes` (the compiled forwarding table),
//! `PUT …/sessions/{id}/subscriptions` (atomic re-wire),
//! `GET …/sessions/{id}/participants/{id}/quality` (measured media quality, `quality`),
//! `GET …/sessions/{id}/activeSpeaker` (the dominant speaker, `speakers`),
//! `GET …/participants/{id}/iceServers` (TURN credentials, `ice`), `GET /openapi.json`, `GET /healthz`
//! and `GET /readyz`.

mod auth_limit;
mod dto;
mod error;
mod extract;
mod ice;
mod participants;
mod quality;
mod request_scope;
mod sessions;
mod speakers;
mod webhooks;

use axum::extract::{DefaultBodyLimit, OriginalUri, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use utoipa::OpenApi;

pub use auth_limit::{AuthFailureLimits, AuthFailures};
#[doc(hidden)]
pub use dto::{parse_body, BodyKind};

/// A session's forwarding table as `GET …/sessions/{s}/routes` answers it (for the operator
/// commands, which print the same shape).
pub fn routes_json(
    session: crate::domain::SessionId,
    members: &[crate::domain::Participant],
    table: &crate::forwarding::ForwardingTable,
) -> serde_json::Value {
    serde_json::to_value(dto::RoutesView::new(session, members, table)).unwrap_or_default()
}
pub use error::{
    log_server_faults, AuthFailure, BodyError, ClientFault, Error, ErrorBody, Logged, ServerFault,
    UnauthorizedBody,
};
pub use extract::parse_optional_json;
pub use ice::{turn_credential, IceServer, TurnServers};
pub use request_scope::{RequestScope, REQUEST_ID_HEADER};

use crate::control::Control;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The orchestrator every handler calls.
    pub control: Control,
}

/// The complete HTTP API.
pub fn router(state: AppState) -> Router {
    let accounts = Router::new()
        .route("/accounts/{account_id}/participants", post(participants::create))
        .route(
            "/accounts/{account_id}/participants/{participant_id}",
            get(participants::get).delete(participants::delete),
        )
        .route("/accounts/{account_id}/participants/{participant_id}/iceServers", get(ice::get))
        .route("/accounts/{account_id}/sessions", post(sessions::create))
        .route(
            "/accounts/{account_id}/sessions/{session_id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/accounts/{account_id}/sessions/{session_id}/participants", get(sessions::members))
        .route(
            "/accounts/{account_id}/sessions/{session_id}/participants/{participant_id}",
            put(sessions::add_member).delete(sessions::remove_member),
        )
        .route(
            "/accounts/{account_id}/sessions/{session_id}/participants/{participant_id}/subscriptions",
            get(sessions::subscriptions).put(sessions::set_subscriptions),
        )
        .route(
            "/accounts/{account_id}/sessions/{session_id}/participants/{participant_id}/quality",
            get(quality::get),
        )
        .route(
            "/accounts/{account_id}/sessions/{session_id}/activeSpeaker",
            get(speakers::get),
        )
        .route("/accounts/{account_id}/sessions/{session_id}/subscriptions", put(sessions::rewire))
        .route("/accounts/{account_id}/sessions/{session_id}/routes", get(sessions::routes))
        .route(
            "/accounts/{account_id}/participants/{participant_id}/webhooks",
            get(webhooks::delivery_log),
        )
        .route(
            "/accounts/{account_id}/webhooks",
            get(webhooks::settings).put(webhooks::set_settings),
        )
        .method_not_allowed_fallback(method_not_allowed);
    Router::new()
        .nest("/v1", accounts.clone())
        .merge(accounts)
        .route("/openapi.json", get(openapi_json))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(log_server_faults))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::NoSuchEndpoint {
        method,
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, OriginalUri(uri): OriginalUri) -> Error {
    Error::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", security(()), responses((status = 200, description = "alive")))]
async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the database answers for every table within 1 s, and the server is not draining
/// before it stops (else 503 with `Retry-After`).
#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, Error> {
    if state.control.is_draining() {
        return Err(Error::Draining);
    }
    state.control.ready().await.map_err(Error::NotReady)?;
    Ok((StatusCode::OK, Json(serde_json::json!({"status": "ready"}))))
}

/// This API's OpenAPI document, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", security(()), responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi_json() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// The OpenAPI description of every endpoint.
#[derive(OpenApi)]
#[openapi(
    info(title = "patchbay", description = "Bandwidth-compatible WebRTC call control. Every `/v1/accounts/...` path is also served without the `/v1` prefix. Authentication: HTTP Basic with the account's API credentials."),
    paths(
        participants::create, participants::get, participants::delete, ice::get,
        sessions::create, sessions::get, sessions::delete, sessions::members,
        sessions::add_member, sessions::remove_member, sessions::subscriptions, sessions::set_subscriptions,
        sessions::rewire, sessions::routes, quality::get, speakers::get, webhooks::delivery_log, webhooks::settings,
        webhooks::set_settings, healthz, readyz, openapi_json,
    ),
    modifiers(&BasicAuth),
    security(("basic" = [])),
)]
pub struct ApiDoc;

struct BasicAuth;

impl utoipa::Modify for BasicAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}
