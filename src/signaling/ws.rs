//! The device connection loop: one task per WebSocket, translating JSON-RPC to control's
//! device verbs ([`DeviceControl`]) and the media plane's notices to JSON-RPC notifications.
//!
//! Every close the server starts sends a close frame with a code and a reason, and waits a
//! moment for the device's answering close frame before dropping the connection. 1000 (the
//! browser SDK does not reconnect): token refused, replaced by a newer connection, deleted,
//! and after `leave` ("left"). Others (the SDK reconnects): 1001 "idle timeout" when nothing
//! (not even a pong to the server's ping) was heard for the idle timeout, 1001 "server
//! shutting down", 1009 for a frame over [`MAX_FRAME_BYTES`], 1002 for a protocol error, 1013 "try again later" when
//! the token cannot be checked now, 1013 "server draining" while the server drains, 1013
//! "session moved: reconnect" when the session is hosted by another process (the door carries
//! the reconnect there) and 1013 "server taken for dead: reconnect" when another process took
//! this one for dead.
//!
//! Origin policy: the participant token is the credential and the SDK runs on customers' own
//! origins, so any `Origin` is accepted unless an allow-list is configured; then a browser's
//! upgrade from another origin is refused with 403 before the upgrade.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::carry;
use super::rpc::{self, RpcError, RpcRequest};
use super::wire::{self, PublishMetadata};
use crate::control::port::DeviceNotice;
use crate::control::port::MediaError;
use crate::control::{
    ConnectError, ConnectedDevice, DeviceControl, Door, Ended, SESSION_EXPIRED, SESSION_MOVED,
    TAKEN_FOR_DEAD,
};
use crate::domain::DeclaredStreams;

/// Largest accepted frame: `deviceDiagnostics` batches logs with SDPs, several MB at times.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// What device connections share: control's device verbs and the listener's policy.
#[derive(Clone)]
pub struct SignalingState {
    /// Control's device verbs.
    pub devices: DeviceControl,
    /// Which browser origins may connect.
    pub origins: OriginPolicy,
    /// Silence after which a device is closed (pinged after half of it).
    pub idle_timeout: Duration,
}

/// Which `Origin` may open a device WebSocket.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Empty: any origin.
    allowed: Arc<[String]>,
}

impl OriginPolicy {
    /// Allows `origins` (compared without case and trailing '/'); none given: any origin.
    pub fn new(origins: &[String]) -> OriginPolicy {
        OriginPolicy {
            allowed: origins
                .iter()
                .map(|o| normalize_origin(o))
                .filter(|o| !o.is_empty())
                .collect(),
        }
    }

    /// Whether a request with these headers may connect: any without an `Origin` header (not
    /// a browser: the token still decides).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        match headers.get(header::ORIGIN) {
            None => true,
            Some(origin) => origin.to_str().is_ok_and(|o| {
                let o = normalize_origin(o);
                self.allowed.contains(&o)
            }),
        }
    }
}

fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// `/v3` and `/v3/` (duplicated leading slashes are folded by the app).
pub fn router(state: SignalingState) -> Router {
    Router::new()
        .route("/v3", get(upgrade))
        .route("/v3/", get(upgrade))
        .with_state(state)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
    Query(query): Query<HashMap<String, String>>,
    State(state): State<SignalingState>,
) -> Response {
    if !state.origins.allows(&headers) {
        tracing::info!(origin = ?headers.get(header::ORIGIN), "device WebSocket from an origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let ws = ws
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES);
    // Another process carried it here: served here, never carried again.
    let carried = headers.contains_key(carry::CARRIED_BY);
    if !carried {
        let token = query.get("token").map(String::as_str).unwrap_or_default();
        if let Door::Carry(host) = state.devices.door(token).await {
            let carry = carry::Carry {
                host,
                query: raw_query.unwrap_or_default(),
                origin: headers.get(header::ORIGIN).cloned(),
                by: state.devices.control().instance().to_owned(),
                idle_timeout: state.idle_timeout,
            };
            return ws.on_upgrade(move |socket| carry::carry(socket, carry));
        }
    }
    ws.on_upgrade(move |socket| connection(state, query, socket))
}

/// Close codes the server sends (see the module doc).
mod code {
    /// Normal: the browser SDK does not reconnect.
    pub(super) const NORMAL: u16 = 1000;
    /// Going away: idle, or the server stops.
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const PROTOCOL_ERROR: u16 = 1002;
    pub(super) const TOO_BIG: u16 = 1009;
    /// Try again later: the database cannot check the token now.
    pub(super) const TRY_AGAIN_LATER: u16 = 1013;
}

/// A close code the browser SDK reconnects on (any but 1000): the device was reset (it answered
/// no subscribe offer) and is started afresh by the reconnect.
pub const RESET_CODE: u16 = 4000;

/// How long a close the server starts waits for the device's answering close frame.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Sends a close frame, then waits (at most [`CLOSE_ANSWER_WAIT`]) for the device's own before
/// the connection is dropped (RFC 6455 section 7.1.1: the TCP connection ends after both close
/// frames). Dropped at once, a device still sending (its own close after `leave`, a last
/// request) gets a TCP reset, which can reach the browser before our close frame is read: it
/// then reports 1006 and the SDK reconnects a second later (a ghost device, a second
/// `onConnect`).
pub(super) async fn close_with(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_ANSWER_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn close(socket: WebSocket, reason: &str) {
    close_with(socket, code::NORMAL, reason).await;
}

/// The close frame owed after a receive error, if the peer can still get one.
pub(super) fn close_for(error: axum::Error) -> Option<(u16, &'static str)> {
    let inner = error.into_inner();
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some((code::TOO_BIG, "frame too large")),
        tungstenite::Error::Protocol(_) | tungstenite::Error::Utf8(_) => {
            Some((code::PROTOCOL_ERROR, "protocol error"))
        }
        _ => None,
    }
}

/// Idle checks per idle timeout: the device is pinged after half of them pass in silence
/// and closed after all of them (so after between 3/4 and all of the timeout).
const IDLE_TICKS: u32 = 4;

async fn connection(state: SignalingState, query: HashMap<String, String>, mut socket: WebSocket) {
    let token = query.get("token").map(String::as_str).unwrap_or_default();
    let unique_id = query.get("uniqueId").cloned().unwrap_or_default();
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let device = match state.devices.connect(token, unique_id, notices_tx).await {
        Ok(d) => d,
        Err(e @ ConnectError::Refused(_)) => {
            tracing::info!(error = %e, "device refused");
            return close(socket, &e.to_string()).await;
        }
        Err(ConnectError::Moved) => {
            // Its session is hosted by another process (placed there since the door looked):
            // the SDK reconnects, and the door carries it there.
            tracing::info!("device refused: its session is hosted by another process");
            return close_with(socket, code::TRY_AGAIN_LATER, "session moved: reconnect").await;
        }
        Err(ConnectError::Draining) => {
            // 1013 as well: the SDK retries, and a balancer sends it to another server.
            tracing::info!("device refused: the server is draining");
            return close_with(socket, code::TRY_AGAIN_LATER, "server draining").await;
        }
        Err(ConnectError::Unavailable(cause)) => {
            // 1013 "try again later": the SDK retries on any code but 1000; the cause stays in
            // the server's log, not in the reason.
            tracing::info!(%cause, "device told to try again later");
            return close_with(socket, code::TRY_AGAIN_LATER, "try again later").await;
        }
    };
    let mut left = false;
    // The device said `leave` (its event is recorded then), not the server for it.
    let mut said_leave = false;
    let mut idle_check =
        tokio::time::interval((state.idle_timeout / IDLE_TICKS).max(Duration::from_millis(10)));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    idle_check.tick().await; // the first tick is immediate
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(_)) if { silent_ticks = 0; false } => {}
                Some(Ok(Message::Text(text))) => {
                    let (reply, leave) = handle_frame(&state, &device, text.as_str()).await;
                    if leave && !left {
                        left = true;
                        said_leave = true;
                        // Answered once its onLeave is in the outbox.
                        state.devices.leave(&device).wait().await;
                    }
                    if let Some(reply) = reply {
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let e = RpcError::new(RpcError::INVALID_REQUEST, "binary frames are not supported: send JSON-RPC as text");
                    if socket.send(Message::Text(rpc::error(&Value::Null, &e).into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // Complete the closing handshake: the echo of the device's close frame is
                    // queued, and the next read flushes it (then ends: nothing more is read
                    // after a close). Dropped unsent, the browser sees 1006 and the SDK
                    // reconnects a second after its own disconnect().
                    let _ = socket.recv().await;
                    break;
                }
                None => break,
                Some(Ok(_)) => {} // ping and pong: answered by the WebSocket layer
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "device socket error");
                    if let Some((code, reason)) = close_for(e) {
                        close_with(socket, code, reason).await;
                    }
                    break;
                }
            },
            _ = idle_check.tick() => {
                silent_ticks += 1;
                if silent_ticks >= IDLE_TICKS {
                    tracing::debug!(device = device.device.0, "device idle: closing");
                    close_with(socket, code::GOING_AWAY, "idle timeout").await;
                    break;
                }
                if silent_ticks == IDLE_TICKS / 2 && socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            },
            notice = notices.recv() => match notice {
                Some(DeviceNotice::Offer(offer)) => {
                    if socket.send(Message::Text(rpc::notification("sdpOffer", wire::SubscribeOffer::from(&offer)).into())).await.is_err() {
                        break;
                    }
                }
                Some(DeviceNotice::Close(reason)) => {
                    // The server ended it because its session expired: reported as a leave
                    // (Bandwidth's onLeave: signalling removed by server action).
                    if reason == SESSION_EXPIRED {
                        left = true;
                    }
                    if reason == SESSION_MOVED || reason == TAKEN_FOR_DEAD {
                        // The device is to reconnect (to its session's host, or as a new
                        // device after another process took this one for dead).
                        close_with(socket, code::TRY_AGAIN_LATER, reason).await;
                    } else {
                        close(socket, reason).await;
                    }
                    break;
                }
                Some(DeviceNotice::Reset(reason)) => {
                    close_with(socket, RESET_CODE, reason).await;
                    break;
                }
                // The media plane let the device go: after `leave`, or because it stops.
                None if left => {
                    close(socket, "left").await;
                    break;
                }
                None => {
                    close_with(socket, code::GOING_AWAY, "server shutting down").await;
                    break;
                }
            },
        }
    }
    let ended = match (said_leave, left) {
        (true, _) => Ended::Left,
        (false, true) => Ended::Removed,
        (false, false) => Ended::Lost,
    };
    state.devices.disconnected(device, ended);
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OfferSdpParams {
    sdp_offer: String,
    #[serde(default)]
    media_metadata: PublishMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerSdpParams {
    sdp_answer: String,
}

fn params<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, RpcError> {
    serde_json::from_value(value)
        .map_err(|e| RpcError::new(RpcError::INVALID_PARAMS, format!("invalid params: {e}")))
}

/// `offerSdp`'s params: the declared streams (aliases checked) and the offer.
fn offer_params(value: Value) -> Result<(DeclaredStreams, String), RpcError> {
    let p = params::<OfferSdpParams>(value)?;
    Ok((p.media_metadata.declared_streams()?, p.sdp_offer))
}

/// One text frame as a request with its SDP within limits. On failure, the error and the id
/// to answer it with (`None`: a notification, answered with nothing).
fn parse_frame(text: &str) -> Result<RpcRequest, (RpcError, Option<Value>)> {
    let request = RpcRequest::parse(text).map_err(|(e, id)| (e, Some(id)))?;
    if let Err(e) = wire::check_sdp_limits(&request.method, &request.params) {
        return Err((e, request.id));
    }
    Ok(request)
}

/// Parses one text frame as far as the server does before it needs a device: the envelope,
/// the SDP limits, and the params of `offerSdp` and `answerSdp`. For the fuzz targets only.
#[doc(hidden)]
pub fn parse_device_frame(text: &str) -> Result<RpcRequest, RpcError> {
    let request = parse_frame(text).map_err(|(e, _)| e)?;
    match request.method.as_str() {
        "offerSdp" => drop(offer_params(request.params.clone())?),
        "answerSdp" => drop(params::<AnswerSdpParams>(request.params.clone())?),
        _ => {}
    }
    Ok(request)
}

fn refused(e: MediaError) -> RpcError {
    match e {
        MediaError::Internal(m) => RpcError::new(RpcError::INTERNAL, m),
        other => RpcError::new(RpcError::REFUSED, other.to_string()),
    }
}

/// Handles one text frame: the reply to send if the frame was a request, and whether it
/// was the device's `leave`.
async fn handle_frame(
    state: &SignalingState,
    device: &ConnectedDevice,
    text: &str,
) -> (Option<String>, bool) {
    let request = match parse_frame(text) {
        Ok(r) => r,
        Err((e, id)) => return (id.map(|id| rpc::error(&id, &e)), false),
    };
    let leave = request.method == "leave";
    let outcome: Result<Value, RpcError> = match request.method.as_str() {
        "setMediaPreferences" | "ping" => Ok(json!({})),
        "offerSdp" => match offer_params(request.params) {
            Ok((declared, sdp)) => state
                .devices
                .publish_offer(device, sdp, declared)
                .await
                .map_err(refused)
                .and_then(|answer| {
                    serde_json::to_value(wire::PublishAnswer::from(&answer))
                        .map_err(|e| RpcError::new(RpcError::INTERNAL, e.to_string()))
                }),
            Err(e) => Err(e),
        },
        "answerSdp" => match params::<AnswerSdpParams>(request.params) {
            Ok(p) => state
                .devices
                .subscribe_answer(device, p.sdp_answer)
                .await
                .map(|()| json!({}))
                .map_err(refused),
            Err(e) => Err(e),
        },
        "leave" => Ok(json!({})), // the connection loop ends the device's media
        "deviceDiagnostics" => {
            tracing::debug!(
                device = device.device.0,
                bytes = text.len(),
                "device diagnostics"
            );
            Ok(json!({}))
        }
        other => Err(RpcError::new(
            RpcError::METHOD_NOT_FOUND,
            format!("unknown method {other:?}"),
        )),
    };
    let reply = request.id.map(|id| match outcome {
        Ok(result) => rpc::result(&id, result),
        Err(e) => rpc::error(&id, &e),
    });
    (reply, leave)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the fuzz target checks, on a few known frames: the envelope, the limits and the
    /// `offerSdp`/`answerSdp` params, refused with the code the connection answers with.
    #[test]
    fn parse_device_frame_checks_what_handle_frame_checks() {
        let code = |text: &str| parse_device_frame(text).err().map(|e| e.code);
        assert_eq!(code(r#"{"jsonrpc":"2.0","method":"ping","id":1}"#), None);
        assert_eq!(code("{"), Some(RpcError::PARSE));
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"offerSdp","params":{},"id":1}"#),
            Some(RpcError::INVALID_PARAMS)
        );
        assert_eq!(
            code(
                r#"{"jsonrpc":"2.0","method":"offerSdp","params":{"sdpOffer":"v=0",
                "mediaMetadata":{"mediaStreams":{"s":{"alias":""}}}},"id":1}"#
            ),
            Some(RpcError::REFUSED)
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"answerSdp","params":["v=0"],"id":1}"#),
            None
        );
        // JSON-escaped newlines: the SDP has one more m= line than allowed.
        let many = "m=audio 9 RTP/AVP 0\\n".repeat(wire::MAX_OFFER_MEDIA_SECTIONS + 1);
        let frame =
            format!(r#"{{"jsonrpc":"2.0","method":"offerSdp","params":{{"sdpOffer":"{many}"}}}}"#);
        assert_eq!(code(&frame), Some(RpcError::INVALID_PARAMS));
    }
}
