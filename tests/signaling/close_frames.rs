//! Every close the server starts carries a close frame with a code and a reason; the idle
//! timeout and the Origin policy of the device WebSocket.

use std::time::Duration;

use futures_util::StreamExt;
use patchbay::config::ServeConfig;
use patchbay::domain::MediaKinds;
use patchbay_testkit::app::spawn_app_with;
use patchbay_testkit::db::sqlite_url;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{call, server, Server, Ws};

/// Generous bound on any single wait (the machine is shared and noisy).
const WAIT: Duration = Duration::from_secs(10);

/// The next close frame, skipping pings, pongs and replies.
async fn next_close(ws: &mut Ws) -> CloseFrame {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("bounded wait")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame,
            Some(Ok(Message::Close(None))) => panic!("a close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn server_with(configure: impl FnOnce(&mut ServeConfig)) -> Server {
    let mut config = ServeConfig::for_database(&sqlite_url());
    configure(&mut config);
    let app = spawn_app_with(&config).await;
    Server::around(app).await
}

#[tokio::test]
async fn leave_is_answered_then_closed_with_1000_left() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3", &token).await;
    let reply = call(&mut ws, r#"{"jsonrpc":"2.0","method":"leave","id":7}"#).await;
    assert_eq!(reply["result"], json!({}));
    let frame = next_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(frame.reason.as_str(), "left");
}

/// A close from the device is answered with a close frame (the closing handshake completes).
/// Dropping the socket instead reads as 1006 in the browser, and the SDK, whose disconnect()
/// sends `leave` and closes at once, then reconnects with the same token a second later.
#[tokio::test]
async fn a_close_from_the_device_is_answered_with_a_close_frame() {
    use futures_util::SinkExt;
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3", &token).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("send close");
    let frame = next_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Normal);
}

#[tokio::test]
async fn a_frame_over_the_limit_is_closed_with_1009() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3", &token).await;
    // Only the head of a masked text frame one byte over the limit: the server refuses it
    // from its declared length, and nothing is left unread (which would reset the socket).
    let len = u64::try_from(patchbay::signaling::MAX_FRAME_BYTES + 1).expect("fits");
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    let raw = match ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        _ => panic!("a plain TCP stream"),
    };
    raw.write_all(&head).await.expect("write the head");
    let frame = next_close(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size);
    assert!(!frame.reason.is_empty());
}

#[tokio::test]
async fn a_silent_device_is_pinged_then_closed_with_1001_and_a_live_one_is_kept() {
    let s = server_with(|c| c.listeners.ws_idle_timeout = 1).await;
    let token = s.token(MediaKinds::ALL).await;

    // Live: reading answers the server's pings (tungstenite replies with pongs).
    let mut live = s.connect("/v3", &token).await;
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(frame) = tokio::time::timeout_at(until, live.next()).await {
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("a live device must not be closed: {other:?}"),
        }
    }
    let r = call(&mut live, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["result"], json!({}));
    drop(live);

    // Silent: nothing read, so no pong; the server closes it after the idle timeout.
    let other = s.token(MediaKinds::ALL).await;
    let mut silent = s.connect("/v3", &other).await;
    #[allow(clippy::disallowed_methods)] // the case under test is silence: nothing to wait for
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut pinged = false;
    let frame = loop {
        match tokio::time::timeout(WAIT, silent.next())
            .await
            .expect("bounded wait")
        {
            Some(Ok(Message::Ping(_))) => pinged = true,
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            other => panic!("expected a ping then a close, got {other:?}"),
        }
    };
    assert!(pinged, "the server pings before giving up");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "idle timeout");
}

#[tokio::test]
async fn the_origin_allow_list_refuses_other_browsers_only() {
    let s = server_with(|c| {
        c.listeners.allowed_origins = vec!["https://App.example.com/".into()];
    })
    .await;
    let token = s.token(MediaKinds::ALL).await;
    let url = format!("{}/v3?token={token}&uniqueId=o1", s.base);
    let with_origin = |origin: Option<&str>| {
        let mut request = url.as_str().into_client_request().expect("request");
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().expect("header"));
        }
        request
    };
    match tokio_tungstenite::connect_async(with_origin(Some("https://evil.example.net"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    for origin in [Some("https://app.example.com"), None] {
        let (mut ws, _) = tokio_tungstenite::connect_async(with_origin(origin))
            .await
            .expect("allowed");
        let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
        assert_eq!(r["result"], json!({}));
        let _ = ws.close(None).await;
    }
}
