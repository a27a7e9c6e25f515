//! `GET …/participants/{participantId}/iceServers`: the ICE servers a participant's browser
//! is given (patchbay's extension). It owns the TURN credentials: time-limited ones minted by
//! the TURN REST convention, which a TURN server configured with the same shared secret (for
//! coturn: `use-auth-secret` and `static-auth-secret`) checks without asking patchbay:
//!
//! - username: `<expiry, seconds since the Unix epoch>:<participant id>`;
//! - credential: base64 of HMAC-SHA1(shared secret, username).
//!
//! The answer is a JSON array of `RTCIceServer` objects (`urls`, `username`, `credential`)
//! that the application passes unchanged as the browser SDK's `iceServers`; `[]` when no TURN
//! server is configured.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use utoipa::ToSchema;

use super::extract::Scope;
use super::{AppState, Error};

/// The TURN servers patchbay mints credentials for, and the secret it shares with them.
#[derive(Clone)]
pub struct TurnServers {
    /// `turn:` / `turns:` URLs, as the browser is to use them (e.g.
    /// `turn:turn.example.com:3478?transport=udp`).
    pub urls: Vec<String>,
    /// The secret shared with the TURN servers.
    pub secret: String,
    /// How long a minted credential stays valid.
    pub lifetime: Duration,
}

impl std::fmt::Debug for TurnServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServers")
            .field("urls", &self.urls)
            .field("secret", &"***")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// One `RTCIceServer` of the WebRTC API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct IceServer {
    /// The server's URLs.
    pub urls: Vec<String>,
    /// `<expiry epoch seconds>:<participant id>`.
    pub username: String,
    /// base64(HMAC-SHA1(shared secret, username)).
    pub credential: String,
}

impl TurnServers {
    /// The ICE servers for `participant`, with credentials valid until `now` + the lifetime.
    pub fn ice_servers(&self, participant: &str, now: SystemTime) -> Vec<IceServer> {
        if self.urls.is_empty() {
            return Vec::new();
        }
        let expiry = now
            .checked_add(self.lifetime)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let username = format!("{expiry}:{participant}");
        let credential = turn_credential(self.secret.as_bytes(), &username);
        vec![IceServer {
            urls: self.urls.clone(),
            username,
            credential,
        }]
    }
}

/// base64(HMAC-SHA1(`secret`, `username`)): the password a TURN server using the REST
/// convention expects for `username`.
pub fn turn_credential(secret: &[u8], username: &str) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The ICE servers (TURN with time-limited credentials) for the participant's browser, to pass
/// unchanged as the SDK's `iceServers`; `[]` when the server has no TURN configured. The
/// response is marked `Cache-Control: no-store`.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/participants/{participantId}/iceServers",
    operation_id = "getParticipantIceServers", tag = "participants",
    params(("accountId" = String, Path), ("participantId" = String, Path)),
    responses((status = 200, body = Vec<IceServer>), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    scope: Scope,
    turn: Option<Extension<Arc<TurnServers>>>,
) -> Result<impl IntoResponse, Error> {
    let participant = state
        .control
        .participant(&scope.account, scope.participant()?)
        .await?;
    // Credentials expire by wall-clock time, which the TURN server compares with its own.
    #[allow(clippy::disallowed_methods)]
    let now = SystemTime::now();
    let servers = match turn {
        Some(Extension(turn)) => turn.ice_servers(&participant.id.to_string(), now),
        None => Vec::new(),
    };
    // The credential is one: no cache on the way may keep a copy.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(servers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_is_base64_of_hmac_sha1() {
        // RFC 2202, HMAC-SHA1 test case 2: effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
        assert_eq!(
            turn_credential(b"Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn username_carries_expiry_and_participant() {
        let turn = TurnServers {
            urls: vec!["turn:turn.example.com:3478".into()],
            secret: "north-wind".into(),
            lifetime: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000 - 3600);
        let servers = turn.ice_servers("6f1a2b3c-0000-4000-8000-000000000001", now);
        assert_eq!(
            servers,
            vec![IceServer {
                urls: vec!["turn:turn.example.com:3478".into()],
                username: "1700000000:6f1a2b3c-0000-4000-8000-000000000001".into(),
                // Computed independently: HMAC-SHA1 with the secret, then base64.
                credential: "YSpti5hNDA8U6W4G81YrXCZv9hE=".into(),
            }]
        );
    }

    #[test]
    fn no_urls_no_servers() {
        let turn = TurnServers {
            urls: Vec::new(),
            secret: "s".into(),
            lifetime: Duration::from_secs(60),
        };
        assert!(turn.ice_servers("p", UNIX_EPOCH).is_empty());
    }
}
