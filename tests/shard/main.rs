//! The media runtime against the running app: what the shards report to control arrives in
//! order. A device republishes and leaves at once; control must see the republish, then the
//! unpublish, and end with none of its streams.

use futures_util::{SinkExt, StreamExt};
use patchbay::config::ServeConfig;
use patchbay::control::port::{DeviceRequest, MediaPort};
use patchbay::control::{Control, ControlEvent, LifecycleEvent, NewParticipant};
use patchbay::domain::PublishPermissions;
use patchbay::domain::{AccountId, MediaKinds, ParticipantId, SessionId, Subscriptions};
use patchbay::media::MediaError;
use patchbay_testkit::app::{spawn_app, spawn_app_with};
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::wait::{event, eventually, DEADLINE};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind};
use str0m::Rtc;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Routes of `session` whose publisher is `publisher`.
fn routes_from(control: &Control, session: SessionId, publisher: ParticipantId) -> usize {
    control
        .tables_snapshot()
        .get(&session)
        .map(|t| t.routes.keys().filter(|k| k.publisher == publisher).count())
        .unwrap_or(0)
}

/// Two new participants of `account` that may publish anything, members of `session`
/// subscribed to all of it: their ids and device tokens.
async fn two_members(
    control: &Control,
    account: &AccountId,
    session: SessionId,
) -> Vec<(ParticipantId, String)> {
    let mut members = Vec::new();
    for _ in 0..2 {
        let new = NewParticipant {
            publish_permissions: Some(MediaKinds::ALL),
            ..Default::default()
        };
        let (p, token) = control
            .create_participant(account, new)
            .await
            .expect("participant");
        let rules = Subscriptions::new(Some(session), vec![]).expect("rules");
        control
            .add_member(account, session, p.id, Some(rules))
            .await
            .expect("member");
        members.push((p.id, token));
    }
    members
}

/// Sends a JSON-RPC request and returns its reply (notifications in between are skipped).
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    reply(ws, id).await
}

async fn reply(ws: &mut Ws, id: u64) -> Value {
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["id"] == json!(id) {
                    return v;
                }
            }
            Message::Close(_) => panic!("closed before the reply to {id}"),
            _ => continue,
        }
    }
}

/// A publish offer adding sendonly tracks of `kinds` to the stream, with its metadata.
fn offer(rtc: &mut Rtc, kinds: &[MediaKind]) -> (Value, SdpPendingOffer) {
    let mut api = rtc.sdp_api();
    for kind in kinds {
        api.add_media(
            *kind,
            Direction::SendOnly,
            Some("stream-p".into()),
            None,
            None,
        );
    }
    let (offer, pending) = api.apply().expect("an offer");
    let params = json!({
        "sdpOffer": offer.to_sdp_string(),
        "mediaMetadata": {"mediaStreams": {"stream-p": {"alias": null}}},
    });
    (params, pending)
}

fn accept(rtc: &mut Rtc, pending: SdpPendingOffer, reply: &Value) {
    let sdp = reply["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("an answer: {reply}"));
    let answer = SdpAnswer::from_sdp_string(sdp).expect("a parsable answer");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("the answer fits the offer");
}

#[tokio::test]
async fn republish_then_leave_ends_with_no_published_streams() {
    let app = spawn_app(&sqlite_url()).await;
    let account = AccountId::parse("order").expect("id");
    let control = app.control.clone();
    control
        .create_account(account.clone())
        .await
        .expect("account");
    let base = format!("ws://{}", app.http);

    let session = control
        .create_session(&account, None)
        .await
        .expect("session")
        .id;
    let (ids, tokens): (Vec<ParticipantId>, Vec<String>) = two_members(&control, &account, session)
        .await
        .into_iter()
        .unzip();
    let publisher = ids[0];
    let url = format!(
        "{base}/v3/?token={}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId=u1",
        tokens[0]
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");

    #[allow(clippy::disallowed_methods)] // the client's own clock
    let mut rtc = Rtc::builder().build(std::time::Instant::now());
    let (params, pending) = offer(&mut rtc, &[MediaKind::Audio]);
    let answer = call(&mut ws, 1, "offerSdp", params).await;
    accept(&mut rtc, pending, &answer);
    eventually("the published audio is routed", DEADLINE, || async {
        routes_from(&control, session, publisher) > 0
    })
    .await;
    let mut events = control.watch();

    // Republish with video, then leave right away: two updates back to back.
    let (params, _pending) = offer(&mut rtc, &[MediaKind::Video]);
    let republish = json!({"jsonrpc": "2.0", "id": 2, "method": "offerSdp", "params": params});
    let leave = json!({"jsonrpc": "2.0", "id": 3, "method": "leave"});
    ws.send(Message::Text(republish.to_string().into()))
        .await
        .expect("send");
    ws.send(Message::Text(leave.to_string().into()))
        .await
        .expect("send");
    let answer = reply(&mut ws, 2).await;
    assert!(answer["result"]["sdpAnswer"].is_string(), "{answer}");
    drop(ws);

    // In order, control hears the republish (audio and video) and then the unpublish; had the
    // two updates crossed, the unpublish would come first and no unpublish would follow the
    // republish.
    let republished = |e: &ControlEvent| {
        matches!(e, ControlEvent::Lifecycle(LifecycleEvent::StreamPublished { participant, kinds, .. })
            if *participant == publisher && *kinds == MediaKinds::ALL)
    };
    event(
        &mut events,
        "the republish with video",
        DEADLINE,
        republished,
    )
    .await;
    let unpublished = |e: &ControlEvent| {
        matches!(e, ControlEvent::Lifecycle(LifecycleEvent::StreamUnpublished { participant, .. })
            if *participant == publisher)
    };
    event(&mut events, "the unpublish after it", DEADLINE, unpublished).await;
    eventually("the last update (no streams) wins", DEADLINE, || async {
        routes_from(&control, session, publisher) == 0
    })
    .await;
    app.stop().await.expect("server stopped");
}

/// The port orders a device's placement and routing changes: a connect that read its
/// participant's session before a change the media plane has since taken is refused (the
/// session must be read again), so a device never lands away from its session's shard
/// unnoticed; read after the change, it is placed.
#[tokio::test]
async fn a_connect_that_read_its_session_before_a_routing_change_is_refused() {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.media_shards = Some(2);
    let app = spawn_app_with(&config).await;
    let account = AccountId::parse("door").expect("id");
    let control = app.control.clone();
    control
        .create_account(account.clone())
        .await
        .expect("account");
    let session = control
        .create_session(&account, None)
        .await
        .expect("session")
        .id;
    let seen = app.media_port.routes_applied();
    let ids: Vec<ParticipantId> = two_members(&control, &account, session)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(
        app.media_port.routes_applied() > seen,
        "joining the session changed its routes"
    );
    let request = |session, routes_seen| DeviceRequest {
        account: account.clone(),
        participant: ids[0],
        session,
        permissions: PublishPermissions::default(),
        unique_id: "u1".into(),
        layout: None,
        routes_seen,
    };
    let (notices, _notices) = mpsc::unbounded_channel();
    let stale = app
        .media_port
        .connect(request(None, Some(seen)), notices.clone())
        .await;
    assert!(
        matches!(stale, Err(MediaError::SessionChanged)),
        "{stale:?}"
    );
    assert!(!app.media_port.is_connected(ids[0]));
    let fresh = request(Some(session), Some(app.media_port.routes_applied()));
    app.media_port
        .connect(fresh, notices)
        .await
        .expect("placed with the session read after the change");
    eventually("the device is placed", DEADLINE, || async {
        app.media_port.is_connected(ids[0])
    })
    .await;
}
