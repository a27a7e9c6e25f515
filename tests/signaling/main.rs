//! Device signalling through a real WebSocket against the running app: token checks, JSON-RPC
//! framing, garbage, size limits, and one live device per participant.

use futures_util::{SinkExt, StreamExt};
use patchbay::control::NewParticipant;
use patchbay::domain::{AccountId, MediaKinds};
use patchbay_testkit::app::{spawn_app, RunningApp};
use patchbay_testkit::db::sqlite_url;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

mod input;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Server {
    base: String,
    control: patchbay::control::Control,
    account: AccountId,
    /// Runs as long as the test holds the server.
    _app: RunningApp,
}

async fn server() -> Server {
    Server::around(spawn_app(&sqlite_url()).await).await
}

impl Server {
    /// The test's account on a running app.
    async fn around(app: RunningApp) -> Server {
        let account = AccountId::parse("sig").expect("id");
        app.control
            .create_account(account.clone())
            .await
            .expect("account");
        Server {
            base: format!("ws://{}", app.http),
            control: app.control.clone(),
            account,
            _app: app,
        }
    }
}

impl Server {
    async fn token(&self, kinds: MediaKinds) -> String {
        let (_, token) = self
            .control
            .create_participant(
                &self.account,
                NewParticipant {
                    publish_permissions: Some(kinds),
                    ..Default::default()
                },
            )
            .await
            .expect("participant");
        token
    }

    async fn connect(&self, path: &str, token: &str) -> Ws {
        let url = format!(
            "{}{path}?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId=u1",
            self.base
        );
        tokio_tungstenite::connect_async(url)
            .await
            .expect("upgrade")
            .0
    }
}

async fn call(ws: &mut Ws, frame: &str) -> Value {
    ws.send(Message::Text(frame.into())).await.expect("send");
    next_json(ws).await
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON reply"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn expect_close_1000(ws: &mut Ws) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::Normal);
                return frame.reason.to_string();
            }
            Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn bad_tokens_are_closed_with_1000_and_a_reason() {
    let s = server().await;
    for token in [
        "",
        "garbage",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.eyJhIjoieCJ9.c2ln",
    ] {
        let mut ws = s.connect("/v3/", token).await;
        let reason = expect_close_1000(&mut ws).await;
        assert!(reason.starts_with("refused:"), "{reason}");
    }
    // A deleted participant's token is revoked.
    let (p, token) = s
        .control
        .create_participant(&s.account, NewParticipant::default())
        .await
        .expect("p");
    s.control
        .delete_participant(&s.account, p.id)
        .await
        .expect("delete");
    let mut ws = s.connect("/v3", &token).await;
    assert!(expect_close_1000(&mut ws)
        .await
        .contains("no longer exists"));
}

#[tokio::test]
async fn every_path_form_the_sdks_use_is_served() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    for path in ["/v3", "/v3/", "//v3/"] {
        let mut ws = s.connect(path, &token).await;
        let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"setMediaPreferences","params":{"protocol":"WEBRTC"},"id":1}"#).await;
        assert_eq!(r, json!({"jsonrpc":"2.0","result":{},"id":1}), "{path}");
    }
}

#[tokio::test]
async fn json_rpc_framing_and_garbage() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3/", &token).await;
    // Ids come back with their JSON type.
    let r = call(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":"9f1c-uuid"}"#,
    )
    .await;
    assert_eq!(r, json!({"jsonrpc":"2.0","result":{},"id":"9f1c-uuid"}));
    let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":42}"#).await;
    assert_eq!(r["id"], json!(42));
    // Garbage gets precise errors.
    for (frame, code) in [
        ("not json", -32700),
        ("[1,2]", -32600),
        (r#"{"jsonrpc":"1.0","method":"ping","id":1}"#, -32600),
        (r#"{"jsonrpc":"2.0","method":"fly","id":2}"#, -32601),
        (
            r#"{"jsonrpc":"2.0","method":"offerSdp","params":{},"id":3}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"offerSdp","params":{"sdpOffer":5},"id":4}"#,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"offerSdp","params":{"sdpOffer":"v=0 garbage"},"id":5}"#,
            -32000,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"answerSdp","params":{"sdpAnswer":"v=0"},"id":6}"#,
            -32000,
        ),
        (
            r#"{"jsonrpc":"2.0","method":"ping","params":7,"id":8}"#,
            -32602,
        ),
    ] {
        let r = call(&mut ws, frame).await;
        assert_eq!(r["jsonrpc"], "2.0", "{frame}");
        assert_eq!(r["error"]["code"], json!(code), "{frame}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{frame}"
        );
    }
    // Binary frames are answered, not fatal.
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .expect("send");
    let r = next_json(&mut ws).await;
    assert_eq!(r["error"]["code"], json!(-32600));
    // Notifications (no id) get no reply, even unknown ones; the next request still works.
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","method":"unknownNotification"}"#.into(),
    ))
    .await
    .expect("send");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","method":"deviceDiagnostics","params":{"logs":[]}}"#.into(),
    ))
    .await
    .expect("send");
    let r = call(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":99}"#,
    )
    .await;
    assert_eq!(r["id"], json!(99));
}

#[tokio::test]
async fn oversized_frames_close_the_socket_and_the_server_keeps_serving() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3/", &token).await;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","method":"deviceDiagnostics","params":{{"logs":["{}"]}}}}"#,
        "x".repeat(patchbay::signaling::MAX_FRAME_BYTES + 1)
    );
    let _ = ws.send(Message::Text(huge.into())).await;
    let closed = loop {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break true,
            Some(Ok(Message::Text(t))) => panic!("no reply expected: {t}"),
            Some(Ok(_)) => continue,
        }
    };
    assert!(closed);
    let mut again = s.connect("/v3/", &token).await;
    let r = call(&mut again, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["result"], json!({}));
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut first = s.connect("/v3/", &token).await;
    let r = call(&mut first, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["id"], json!(1));
    let mut second = s.connect("/v3/", &token).await;
    let r = call(&mut second, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["id"], json!(1));
    let reason = expect_close_1000(&mut first).await;
    assert!(reason.contains("replaced"), "{reason}");
}

#[tokio::test]
async fn deleting_the_participant_closes_its_device() {
    let s = server().await;
    let (p, token) = s
        .control
        .create_participant(&s.account, NewParticipant::default())
        .await
        .expect("p");
    let mut ws = s.connect("/v3/", &token).await;
    let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["id"], json!(1));
    s.control
        .delete_participant(&s.account, p.id)
        .await
        .expect("delete");
    assert!(expect_close_1000(&mut ws).await.contains("deleted"));
}

/// Issue 10 item 3: leaving a session is not leaving the call: the device's WebSocket stays,
/// and the participant may be added to another session (only deleting it closes).
#[tokio::test]
async fn leaving_a_session_keeps_the_device_connected() {
    let s = server().await;
    let (p, token) = s
        .control
        .create_participant(&s.account, NewParticipant::default())
        .await
        .expect("p");
    let first = s.control.create_session(&s.account, None).await.expect("s");
    let second = s.control.create_session(&s.account, None).await.expect("s");
    s.control
        .add_member(&s.account, first.id, p.id, None)
        .await
        .expect("member");
    let mut ws = s.connect("/v3/", &token).await;
    let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":1}"#).await;
    assert_eq!(r["id"], json!(1));
    s.control
        .remove_member(&s.account, first.id, p.id)
        .await
        .expect("remove");
    let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":2}"#).await;
    assert_eq!(r["id"], json!(2), "still connected in no session");
    s.control
        .add_member(&s.account, second.id, p.id, None)
        .await
        .expect("member again");
    let r = call(&mut ws, r#"{"jsonrpc":"2.0","method":"ping","id":3}"#).await;
    assert_eq!(r["id"], json!(3), "still connected in another session");
    s.control
        .delete_participant(&s.account, p.id)
        .await
        .expect("delete");
    assert!(expect_close_1000(&mut ws).await.contains("deleted"));
}

mod close_frames;
