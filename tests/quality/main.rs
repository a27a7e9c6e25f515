//! Measured media quality (issue 21, step 1) over a real call: the whole server in-process,
//! two str0m devices speaking Bandwidth's device protocol over a real WebSocket and ICE,
//! DTLS-SRTP and RTP over real UDP. A publisher sends Opus and VP8 frames; a subscriber
//! receives them and sends a PLI. `GET …/participants/{p}/quality` must show what flowed:
//! the publisher's ingress, the subscriber's egress, the subscriber's PLI counted (and passed
//! on to the publisher), nothing for a member with no device, and 404 for what is not a
//! member; `/metrics` shows the shard's keyframe requests.
//!
//! Run with `cargo test --test quality`.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use patchbay::config::ServeConfig;
use patchbay::domain::AccountId;
use patchbay_testkit::app::{spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::frames::{frame, Kind};
use patchbay_testkit::rtc::{browser_rtc, builtin_channel, drain, receive, write_frame};
use patchbay_testkit::wait::{eventually, DEADLINE};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Rest {
    http: SocketAddr,
    account: String,
    user: String,
    pass: String,
    client: reqwest::Client,
}

impl Rest {
    /// `method path` under the account: the status and the JSON body (`Null` if none).
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("http://{}/v1/accounts/{}{path}", self.http, self.account);
        let mut request = self
            .client
            .request(method, url)
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.request(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    /// A participant (audio and video), its id and token.
    async fn participant(&self) -> (String, String) {
        let created = self
            .ok(
                reqwest::Method::POST,
                "/participants",
                Some(json!({"publishPermissions": ["AUDIO", "VIDEO"]})),
            )
            .await;
        (
            created["participant"]["id"]
                .as_str()
                .expect("id")
                .to_owned(),
            created["token"].as_str().expect("token").to_owned(),
        )
    }

    async fn quality(&self, session: &str, participant: &str) -> (u16, Value) {
        self.request(
            reqwest::Method::GET,
            &format!("/sessions/{session}/participants/{participant}/quality"),
            None,
        )
        .await
    }
}

async fn start() -> (RunningApp, Rest) {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.media_shards = Some(1);
    let app = spawn_app_with(&config).await;
    let creds = app
        .control
        .create_account(AccountId::parse("quality").expect("id"))
        .await
        .expect("account");
    let rest = Rest {
        http: app.http,
        account: "quality".into(),
        user: creds.username,
        pass: creds.password,
        client: reqwest::Client::new(),
    };
    (app, rest)
}

/// A device's WebSocket, and the notifications that came while it waited for a reply.
struct Signal {
    ws: Ws,
    backlog: Vec<Value>,
}

/// Sends a JSON-RPC request and returns its reply (notifications in between are kept in the
/// backlog: a subscribe offer may come before the reply to `setMediaPreferences`).
async fn call(signal: &mut Signal, id: u64, method: &str, params: Value) -> Value {
    let ws = &mut signal.ws;
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v.get("id").and_then(Value::as_u64) == Some(id) {
                    return v;
                }
                signal.backlog.push(v);
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn connect_ws(http: SocketAddr, token: &str, unique: &str) -> Signal {
    let url = format!(
        "ws://{http}/v3?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={unique}"
    );
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let mut signal = Signal {
        ws,
        backlog: Vec::new(),
    };
    let prefs = call(
        &mut signal,
        1,
        "setMediaPreferences",
        json!({"protocol": "WEBRTC"}),
    )
    .await;
    assert!(prefs.get("result").is_some(), "{prefs}");
    signal
}

/// One peer connection of a device on its own UDP socket.
struct Side {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    /// The SDK's data channels were made (subscribe connections, at the first answer).
    channels: bool,
}

impl Side {
    async fn new(rtc: Rtc) -> Side {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let mut side = Side {
            rtc,
            socket,
            addr,
            channels: false,
        };
        side.rtc
            .add_local_candidate(Candidate::host(addr, "udp").expect("candidate"));
        side
    }

    /// Runs the `Rtc` until it waits, sending what it transmits; its events and next timeout.
    async fn pump(&mut self) -> (Vec<Event>, Instant) {
        let mut events = Vec::new();
        let mut out = Vec::new();
        let now = Instant::now();
        let _ = self.rtc.handle_input(Input::Timeout(now));
        let (next, err) = drain(&mut self.rtc, now, |t| out.push(t), &mut events);
        assert!(err.is_none(), "device Rtc failed: {err:?}");
        for t in out {
            let _ = self.socket.send_to(&t.contents, t.destination).await;
        }
        (events, next)
    }
}

/// What a device task is asked to do.
enum Ask {
    /// Send a PLI on the subscribe connection's video m-line.
    Pli,
}

/// What a device task reports.
#[derive(Debug, Clone, Default)]
struct Seen {
    publish_connected: bool,
    subscribe_connected: bool,
    /// Media frames received on the subscribe connection.
    frames_received: u64,
    /// The subscribe connection's video mid, once video arrived.
    video_mid: Option<Mid>,
    /// PLIs sent.
    plis_sent: u64,
}

/// A publisher's publish connection: audio and video of one MediaStream, offered and answered.
async fn publish(signal: &mut Signal) -> (Side, Mid, Mid) {
    let mut side = Side::new(browser_rtc(Instant::now())).await;
    let mut api = side.rtc.sdp_api();
    api.add_channel_with_config(builtin_channel(0, "__heartbeat__"));
    api.add_channel_with_config(builtin_channel(1, "__diagnostics__"));
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("stream-q".into()),
        None,
        None,
    );
    let video = api.add_media(
        MediaKind::Video,
        Direction::SendOnly,
        Some("stream-q".into()),
        None,
        None,
    );
    let (offer, pending) = api.apply().expect("an offer");
    let params = json!({
        "sdpOffer": offer.to_sdp_string(),
        "mediaMetadata": {"mediaStreams": {"stream-q": {"alias": null}}, "dataChannels": {
            "__heartbeat__": {"label": "__heartbeat__", "streamId": 0},
            "__diagnostics__": {"label": "__diagnostics__", "streamId": 1},
        }},
    });
    let reply = call(signal, 2, "offerSdp", params).await;
    let sdp = reply["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("an answer: {reply}"));
    side.rtc
        .sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(sdp).expect("answer parses"),
        )
        .expect("answer accepted");
    (side, audio, video)
}

/// Runs a device: its publish connection (with the mids it sends audio and video on) if it
/// publishes, its subscribe connection (answering the server's offers), its WebSocket.
async fn run_device(
    signal: Signal,
    mut publisher: Option<(Side, Mid, Mid)>,
    mut asks: mpsc::UnboundedReceiver<Ask>,
    seen: watch::Sender<Seen>,
) {
    let mut sub = Side::new(browser_rtc(Instant::now())).await;
    let Signal { mut ws, backlog } = signal;
    let mut rpc_id = 100;
    for v in backlog {
        rpc_id += 1;
        answer_offer(&mut sub, &mut ws, &v, rpc_id).await;
    }
    let started = Instant::now();
    let (mut audio_sent, mut video_sent) = (0u64, 0u64);
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    loop {
        // Both connections run until they wait; what they say is recorded.
        let mut next = Instant::now() + Duration::from_millis(10);
        if let Some((side, audio, video)) = publisher.as_mut() {
            if seen.borrow().publish_connected {
                // Catch up to real time: audio every 20 ms, video every 100 ms.
                let elapsed = started.elapsed().as_millis() as u64;
                while audio_sent < elapsed / 20 {
                    let t = MediaTime::new(audio_sent * 960, Frequency::FORTY_EIGHT_KHZ);
                    let data = frame(1, Kind::Audio, audio_sent as u32, true);
                    write_frame(&mut side.rtc, *audio, Codec::Opus, t, data, Instant::now());
                    audio_sent += 1;
                }
                while video_sent < elapsed / 100 {
                    let t = MediaTime::new(video_sent * 9000, Frequency::NINETY_KHZ);
                    let data = frame(1, Kind::Video, video_sent as u32, video_sent % 10 == 0);
                    write_frame(&mut side.rtc, *video, Codec::Vp8, t, data, Instant::now());
                    video_sent += 1;
                }
            }
            let (events, at) = side.pump().await;
            next = next.min(at);
            if events.iter().any(|e| matches!(e, Event::Connected)) {
                seen.send_modify(|s| s.publish_connected = true);
            }
        }
        let (events, at) = sub.pump().await;
        next = next.min(at);
        for e in events {
            match e {
                Event::Connected => seen.send_modify(|s| s.subscribe_connected = true),
                Event::MediaData(data) => {
                    let video = sub.rtc.media(data.mid).map(|m| m.kind()) == Some(MediaKind::Video);
                    seen.send_modify(|s| {
                        s.frames_received += 1;
                        if video {
                            s.video_mid = Some(data.mid);
                        }
                    });
                }
                _ => {}
            }
        }
        // At least a millisecond: a connection due now is run on the next turn, and the task
        // never spins (it shares two worker threads with the server).
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let pub_socket = publisher.as_ref().map(|(s, _, _)| &s.socket);
        tokio::select! {
            frame = ws.next() => {
                let Some(Ok(Message::Text(t))) = frame else {
                    match frame {
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                rpc_id += 1;
                answer_offer(&mut sub, &mut ws, &v, rpc_id).await;
            }
            ask = asks.recv() => {
                let Some(Ask::Pli) = ask else { return };
                let mid = seen.borrow().video_mid.expect("video arrived before a PLI is asked");
                let mut writer = sub.rtc.writer(mid).expect("a writer for the video m-line");
                assert!(writer.is_request_keyframe_possible(KeyframeRequestKind::Pli));
                writer.request_keyframe(None, KeyframeRequestKind::Pli).expect("PLI");
                seen.send_modify(|s| s.plis_sent += 1);
                let _ = sub.rtc.handle_input(Input::Timeout(Instant::now()));
            }
            got = async {
                match pub_socket {
                    Some(s) => s.recv_from(&mut pub_buf).await,
                    None => std::future::pending().await,
                }
            } => {
                if let (Ok((n, from)), Some((side, _, _))) = (got, publisher.as_mut()) {
                    let _ = receive(&mut side.rtc, from, side.addr, &pub_buf[..n], Instant::now());
                }
            }
            got = sub.socket.recv_from(&mut sub_buf) => {
                if let Ok((n, from)) = got {
                    let _ = receive(&mut sub.rtc, from, sub.addr, &sub_buf[..n], Instant::now());
                }
            }
            _ = tokio::time::sleep(wait) => {
                let _ = sub.rtc.handle_input(Input::Timeout(Instant::now()));
                if let Some((side, _, _)) = publisher.as_mut() {
                    let _ = side.rtc.handle_input(Input::Timeout(Instant::now()));
                }
            }
        }
    }
}

/// Answers `message` if it is a subscribe offer (`sdpOffer`), as request `id`.
async fn answer_offer(sub: &mut Side, ws: &mut Ws, message: &Value, id: u64) {
    if message["method"] != "sdpOffer" {
        return;
    }
    let sdp = message["params"]["sdpOffer"]
        .as_str()
        .expect("an offer's SDP");
    let offer = SdpOffer::from_sdp_string(sdp).expect("the offer parses");
    let answer = sub
        .rtc
        .sdp_api()
        .accept_offer(offer)
        .expect("offer accepted");
    if !sub.channels {
        sub.channels = true;
        for (id, label) in [(0, "__heartbeat__"), (1, "__diagnostics__")] {
            sub.rtc
                .direct_api()
                .create_data_channel(builtin_channel(id, label));
        }
    }
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": "answerSdp",
        "params": {"sdpAnswer": answer.to_sdp_string()}});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// Starts a device task; its asks and what it saw.
fn spawn_device(
    signal: Signal,
    publisher: Option<(Side, Mid, Mid)>,
) -> (mpsc::UnboundedSender<Ask>, watch::Receiver<Seen>) {
    let (ask_tx, ask_rx) = mpsc::unbounded_channel();
    let (seen_tx, seen_rx) = watch::channel(Seen::default());
    tokio::spawn(run_device(signal, publisher, ask_rx, seen_tx));
    (ask_tx, seen_rx)
}

fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer).and_then(Value::as_u64).unwrap_or(0)
}

/// The sum of a metric's samples over its label sets, from `/metrics`.
async fn metric_sum(http: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quality_reports_what_flowed_and_counts_a_subscriber_pli() {
    let (app, rest) = start().await;
    let session = rest
        .ok(reqwest::Method::POST, "/sessions", Some(json!({})))
        .await["id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let (publisher, pub_token) = rest.participant().await;
    let (subscriber, sub_token) = rest.participant().await;
    let (absent, _) = rest.participant().await;
    let (outsider, _) = rest.participant().await;
    for p in [&publisher, &subscriber, &absent] {
        rest.ok(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/participants/{p}"),
            Some(json!({"sessionId": session})),
        )
        .await;
    }

    // Not found: an unknown session, an unknown participant, a participant not a member.
    let unknown = uuid::Uuid::new_v4().to_string();
    for (s, p, what) in [
        (&unknown, &publisher, "an unknown session"),
        (&session, &unknown, "an unknown participant"),
        (&session, &outsider, "a participant not in the session"),
    ] {
        let (status, body) = rest.quality(s, p).await;
        assert_eq!(status, 404, "{what}: {body}");
        assert!(
            body["error"].is_string(),
            "{what}: a JSON error body: {body}"
        );
    }
    // A member with no device: an explicit "not connected".
    let (status, body) = rest.quality(&session, &absent).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connected"], false, "{body}");
    assert_eq!(body["hostedElsewhere"], false, "{body}");
    assert!(
        body["device"].is_null() && body["publish"].is_null() && body["subscribe"].is_null(),
        "{body}"
    );

    // The publisher publishes audio and video; the subscriber receives them.
    let mut pub_ws = connect_ws(app.http, &pub_token, "quality-pub").await;
    let published = publish(&mut pub_ws).await;
    let (_pub_asks, pub_seen) = spawn_device(pub_ws, Some(published));
    let sub_ws = connect_ws(app.http, &sub_token, "quality-sub").await;
    let (sub_asks, sub_seen) = spawn_device(sub_ws, None);
    eventually(
        "the subscriber receives audio and video",
        DEADLINE,
        || async {
            let s = sub_seen.borrow().clone();
            s.video_mid.is_some() && s.frames_received > 20
        },
    )
    .await;
    assert!(pub_seen.borrow().publish_connected);

    // The publisher's ingress: bytes, a bitrate, both tracks.
    eventually("the publisher's ingress is measured", DEADLINE, || async {
        let (_, q) = rest.quality(&session, &publisher).await;
        u64_at(&q, "/publish/bitrateBps") > 0
            && q["publish"]["tracks"]
                .as_array()
                .is_some_and(|t| t.len() == 2)
    })
    .await;
    let (_, q) = rest.quality(&session, &publisher).await;
    assert_eq!(q["connected"], true, "{q}");
    assert_eq!(q["device"], "browser", "{q}");
    assert_eq!(q["publish"]["connected"], true, "{q}");
    assert!(
        u64_at(&q, "/publish/bytes") > 0 && u64_at(&q, "/publish/packets") > 0,
        "{q}"
    );
    let mut kinds: Vec<&str> = q["publish"]["tracks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["kind"].as_str())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["AUDIO", "VIDEO"], "{q}");
    // It subscribes to nobody who publishes: its subscribe side carried no media.
    assert_eq!(u64_at(&q, "/subscribe/bytes"), 0, "{q}");

    // The subscriber's egress: what the server sent it, and what it reported back.
    eventually("the subscriber's egress is measured", DEADLINE, || async {
        let (_, q) = rest.quality(&session, &subscriber).await;
        u64_at(&q, "/subscribe/bitrateBps") > 0
    })
    .await;
    let (_, q) = rest.quality(&session, &subscriber).await;
    assert_eq!(q["subscribe"]["connected"], true, "{q}");
    assert!(u64_at(&q, "/subscribe/bytes") > 0, "{q}");
    // It publishes nothing: no publish connection carried media.
    assert_eq!(u64_at(&q, "/publish/bytes"), 0, "{q}");

    // A PLI from the subscriber is counted on its subscribe connection and passed on (or
    // merged) toward the publisher; the shard counts it too.
    let plis_before = u64_at(&q, "/subscribe/plisReceived");
    let received_before =
        metric_sum(app.http, "patchbay_media_keyframe_requests_received_total").await;
    sub_asks.send(Ask::Pli).expect("device task");
    eventually("the subscriber's PLI is counted", DEADLINE, || async {
        let (_, q) = rest.quality(&session, &subscriber).await;
        u64_at(&q, "/subscribe/plisReceived") > plis_before
    })
    .await;
    let (_, q) = rest.quality(&session, &subscriber).await;
    let passed = u64_at(&q, "/subscribe/keyframeRequestsForwarded")
        + u64_at(&q, "/subscribe/keyframeRequestsSuppressed");
    assert!(passed >= 1, "the PLI was either passed on or merged: {q}");
    assert_eq!(sub_seen.borrow().plis_sent, 1);
    let (_, p) = rest.quality(&session, &publisher).await;
    assert!(u64_at(&p, "/publish/keyframeRequestsSent") >= 1, "{p}");
    eventually("the shard counts the PLI", DEADLINE, || async {
        metric_sum(app.http, "patchbay_media_keyframe_requests_received_total").await
            > received_before
    })
    .await;

    // On loopback nothing is lost or late: both read good.
    for who in [&publisher, &subscriber] {
        eventually("the level reads good", DEADLINE, || async {
            rest.quality(&session, who).await.1["level"] == "good"
        })
        .await;
    }

    // Still nothing for the member without a device.
    let (_, body) = rest.quality(&session, &absent).await;
    assert_eq!(body["connected"], false, "{body}");
    assert!(body["level"].is_null(), "{body}");
    app.stop().await.expect("stop");
}
