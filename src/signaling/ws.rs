//! The device connection loop: one task per WebSocket, translating JSON-RPC to control's
//! device verbs ([`DeviceControl`]) and the media plane's notices to JSON-RPC notifications.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::rpc::{self, RpcError, RpcRequest};
use super::wire::{self, PublishMetadata};
use crate::control::port::DeviceNotice;
use crate::control::{ConnectError, ConnectedDevice, DeviceControl};
use crate::media::{DeclaredStreams, MediaError};

/// Largest accepted frame: `deviceDiagnostics` batches logs with SDPs, several MB at times.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// What device connections share: control's device verbs.
#[derive(Clone)]
pub struct SignalingState {
    /// Control's device verbs.
    pub devices: DeviceControl,
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
    Query(query): Query<HashMap<String, String>>,
    State(state): State<SignalingState>,
) -> Response {
    ws.max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| connection(state, query, socket))
}

/// Closes with code 1000: the browser SDK does not reconnect after it.
async fn close(socket: WebSocket, reason: &str) {
    close_with(socket, 1000, reason).await
}

/// A close code the browser SDK reconnects on (any but 1000): the device was reset.
pub const RESET_CODE: u16 = 4000;

async fn close_with(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

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
        Err(ConnectError::Unavailable(cause)) => {
            // 1013 "try again later": the SDK retries on any code but 1000; the cause stays in
            // the server's log, not in the reason.
            tracing::info!(%cause, "device told to try again later");
            let frame = CloseFrame {
                code: 1013,
                reason: "try again later".into(),
            };
            let _ = socket.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    let mut left = false;
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let (reply, leave) = handle_frame(&state, &device, text.as_str()).await;
                    if leave && !left {
                        left = true;
                        state.devices.leave(&device);
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
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {} // ping and pong: answered by the WebSocket layer
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "device socket error");
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
                    close(socket, reason).await;
                    break;
                }
                Some(DeviceNotice::Reset(reason)) => {
                    close_with(socket, RESET_CODE, reason).await;
                    break;
                }
                None => break,
            },
        }
    }
    state.devices.disconnected(device, left);
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
