//! Who is speaking (issue 21, step 5) over a real call: the whole server in-process, str0m
//! devices speaking Bandwidth's device protocol over a real WebSocket and ICE, DTLS-SRTP and
//! RTP over real UDP. Each device publishes Opus with the RFC 6464 audio-level header
//! extension, as browsers do, at a level the test sets (loud while it "talks", silence
//! otherwise). The devices take turns; `GET …/sessions/{s}/activeSpeaker` must follow each
//! turn, and the opt-in `onActiveSpeaker` webhook must arrive once per change for an account
//! that turned it on, and never after it turned it off. A phone (the test phone over SIP,
//! G.711 tones) counts like a browser: the bridge measures its decoded audio.
//!
//! Run with `cargo test --test speaker`.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use futures_util::{SinkExt, StreamExt};
use patchbay::config::ServeConfig;
use patchbay::domain::AccountId;
use patchbay_testkit::app::{spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::frames::{frame, Kind};
use patchbay_testkit::phone_ua::{dial, Dial};
use patchbay_testkit::rtc::{browser_rtc, builtin_channel, drain, payload_type, receive};
use patchbay_testkit::wait::{eventually, DEADLINE};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// RFC 6464 levels (-dBov): a voice, and nothing.
const TALK: u8 = 25;
const SILENCE: u8 = 127;

struct Rest {
    http: SocketAddr,
    account: String,
    user: String,
    pass: String,
    client: reqwest::Client,
}

impl Rest {
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

    /// An audio participant whose webhooks go to `hook`: its id and token.
    async fn participant(&self, hook: &str) -> (String, String) {
        let created = self
            .ok(
                reqwest::Method::POST,
                "/participants",
                Some(json!({"publishPermissions": ["AUDIO"], "callbackUrl": hook})),
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

    async fn speaker(&self, session: &str) -> (u16, Value) {
        self.request(
            reqwest::Method::GET,
            &format!("/sessions/{session}/activeSpeaker"),
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
        .create_account(AccountId::parse("speaker").expect("id"))
        .await
        .expect("account");
    let rest = Rest {
        http: app.http,
        account: "speaker".into(),
        user: creds.username,
        pass: creds.password,
        client: reqwest::Client::new(),
    };
    (app, rest)
}

/// The webhooks received, as JSON bodies in arrival order.
type Hooks = Arc<Mutex<Vec<Value>>>;

async fn hook(State(hooks): State<Hooks>, body: String) -> StatusCode {
    if let Ok(v) = serde_json::from_str(&body) {
        hooks.lock().expect("hooks").push(v);
    }
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Hooks) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let hooks = Hooks::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(hooks.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), hooks)
}

/// The events of type `event` received, as (participantId, body).
fn received(hooks: &Hooks, event: &str) -> Vec<(String, Value)> {
    hooks
        .lock()
        .expect("hooks")
        .iter()
        .filter(|v| v["event"] == event)
        .map(|v| {
            (
                v["participantId"].as_str().unwrap_or("").to_owned(),
                v.clone(),
            )
        })
        .collect()
}

struct Signal {
    ws: Ws,
    backlog: Vec<Value>,
}

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

/// A publish connection with one audio m-line, offered and answered.
async fn publish(signal: &mut Signal, stream: &str) -> (Side, Mid) {
    let mut side = Side::new(browser_rtc(Instant::now())).await;
    let mut api = side.rtc.sdp_api();
    api.add_channel_with_config(builtin_channel(0, "__heartbeat__"));
    api.add_channel_with_config(builtin_channel(1, "__diagnostics__"));
    let audio = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some(stream.into()),
        None,
        None,
    );
    let (offer, pending) = api.apply().expect("an offer");
    let params = json!({
        "sdpOffer": offer.to_sdp_string(),
        "mediaMetadata": {"mediaStreams": {stream: {"alias": null}}, "dataChannels": {
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
    (side, audio)
}

/// Runs a device: it publishes Opus every 20 ms with the audio level in `level` (as the
/// RFC 6464 extension), and answers its subscribe connection's offers.
async fn run_device(signal: Signal, mut publisher: (Side, Mid), level: Arc<AtomicU8>) {
    let mut sub = Side::new(browser_rtc(Instant::now())).await;
    let Signal { mut ws, backlog } = signal;
    let mut rpc_id = 100;
    for v in backlog {
        rpc_id += 1;
        answer_offer(&mut sub, &mut ws, &v, rpc_id).await;
    }
    let mut connected = false;
    let mut started = Instant::now();
    let mut sent = 0u64;
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    loop {
        let mut next = Instant::now() + Duration::from_millis(10);
        {
            let (side, audio) = &mut publisher;
            if connected {
                let elapsed = started.elapsed().as_millis() as u64;
                while sent < elapsed / 20 {
                    let t = MediaTime::new(sent * 960, Frequency::FORTY_EIGHT_KHZ);
                    let data = frame(1, Kind::Audio, sent as u32, true);
                    let l = level.load(Ordering::Relaxed).min(127);
                    if let Some(pt) = payload_type(&mut side.rtc, *audio, Codec::Opus) {
                        if let Some(w) = side.rtc.writer(*audio) {
                            let _ = w.audio_level(-(l as i8), l < 127).write(
                                pt,
                                Instant::now(),
                                t,
                                data,
                            );
                        }
                    }
                    sent += 1;
                }
            }
            let (events, at) = side.pump().await;
            next = next.min(at);
            if !connected && events.iter().any(|e| matches!(e, Event::Connected)) {
                connected = true;
                started = Instant::now();
            }
        }
        let (_, at) = sub.pump().await;
        next = next.min(at);
        let wait = next
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
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
            got = publisher.0.socket.recv_from(&mut pub_buf) => {
                if let Ok((n, from)) = got {
                    let side = &mut publisher.0;
                    let _ = receive(&mut side.rtc, from, side.addr, &pub_buf[..n], Instant::now());
                }
            }
            got = sub.socket.recv_from(&mut sub_buf) => {
                if let Ok((n, from)) = got {
                    let _ = receive(&mut sub.rtc, from, sub.addr, &sub_buf[..n], Instant::now());
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

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

/// A device that publishes audio at the level it is given (silence to begin with).
async fn talker(http: SocketAddr, token: &str, unique: &str) -> Arc<AtomicU8> {
    let mut ws = connect_ws(http, token, unique).await;
    let published = publish(&mut ws, &format!("stream-{unique}")).await;
    let level = Arc::new(AtomicU8::new(SILENCE));
    tokio::spawn(run_device(ws, published, level.clone()));
    level
}

/// `talking` speaks, everyone else is silent.
fn turn(levels: &[(&String, &Arc<AtomicU8>)], talking: &str) {
    for (who, level) in levels {
        let l = if who.as_str() == talking {
            TALK
        } else {
            SILENCE
        };
        level.store(l, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dominant_speaker_follows_each_turn_and_is_announced_once_per_change() {
    let (app, rest) = start().await;
    let (hook_url, hooks) = start_receiver().await;
    let session = rest
        .ok(reqwest::Method::POST, "/sessions", Some(json!({})))
        .await["id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let (a, token_a) = rest.participant(&hook_url).await;
    let (b, token_b) = rest.participant(&hook_url).await;
    for p in [&a, &b] {
        rest.ok(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/participants/{p}"),
            Some(json!({"sessionId": session})),
        )
        .await;
    }

    // Unknown session: 404 with a JSON body. Nobody has spoken yet: no speaker.
    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body) = rest.speaker(&unknown).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = rest.speaker(&session).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["participantId"].is_null(), "{body}");
    assert_eq!(body["hostedElsewhere"], false, "{body}");
    assert_eq!(body["sessionId"], session.as_str(), "{body}");

    // The account asks for onActiveSpeaker (off by default).
    let settings = rest.ok(reqwest::Method::GET, "/webhooks", None).await;
    assert_eq!(settings["activeSpeakerEvents"], false, "{settings}");
    let settings = rest
        .ok(
            reqwest::Method::PUT,
            "/webhooks",
            Some(json!({"activeSpeakerEvents": true})),
        )
        .await;
    assert_eq!(settings["activeSpeakerEvents"], true, "{settings}");
    assert_eq!(settings["bandwidthOnly"], false, "{settings}");
    assert_eq!(
        settings["qualityEvents"], false,
        "each opt-in is its own: {settings}"
    );

    let level_a = talker(app.http, &token_a, "speaker-a").await;
    let level_b = talker(app.http, &token_b, "speaker-b").await;
    let levels = [(&a, &level_a), (&b, &level_b)];

    // Turns: a, b, a. Each turn lasts until the view follows it, then a little longer.
    let mut since = 0;
    for who in [&a, &b, &a] {
        turn(&levels, who);
        eventually(
            &format!("the dominant speaker becomes {who}"),
            DEADLINE,
            || async { rest.speaker(&session).await.1["participantId"] == who.as_str() },
        )
        .await;
        let (_, body) = rest.speaker(&session).await;
        assert_eq!(body["phone"], false, "{body}");
        let at = body["since"].as_i64().expect("since");
        assert!(at > since, "since moves forward: {body}");
        since = at;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // The speaker holds while it talks.
        assert_eq!(
            rest.speaker(&session).await.1["participantId"],
            who.as_str()
        );
    }

    // Silence keeps the last speaker.
    turn(&levels, "nobody");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rest.speaker(&session).await.1["participantId"], a.as_str());

    // One webhook per change, in order, naming the session.
    eventually("three onActiveSpeaker webhooks", DEADLINE, || async {
        received(&hooks, "onActiveSpeaker").len() >= 3
    })
    .await;

    // Turned off: b takes the floor, the view follows, no webhook goes.
    rest.ok(
        reqwest::Method::PUT,
        "/webhooks",
        Some(json!({"activeSpeakerEvents": false})),
    )
    .await;
    turn(&levels, &b);
    eventually("the dominant speaker becomes b again", DEADLINE, || async {
        rest.speaker(&session).await.1["participantId"] == b.as_str()
    })
    .await;
    // Each participant's webhooks arrive in order: once its deletion's onDisconnect is
    // here, any onActiveSpeaker raised before it would be too.
    for p in [&a, &b] {
        rest.ok(reqwest::Method::DELETE, &format!("/participants/{p}"), None)
            .await;
    }
    eventually("both participants' onDisconnect", DEADLINE, || async {
        let gone = received(&hooks, "onDisconnect");
        [&a, &b].iter().all(|p| gone.iter().any(|(q, _)| q == *p))
    })
    .await;
    let announced = received(&hooks, "onActiveSpeaker");
    let who: Vec<&str> = announced.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(who, [a.as_str(), b.as_str(), a.as_str()], "{announced:?}");
    for (_, body) in &announced {
        assert_eq!(body["sessionId"], session.as_str(), "{body}");
        assert_eq!(body["phone"], false, "{body}");
    }
    app.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_counts_like_a_browser() {
    let (app, rest) = start().await;
    let (hook_url, hooks) = start_receiver().await;
    rest.ok(
        reqwest::Method::PUT,
        "/webhooks",
        Some(json!({"activeSpeakerEvents": true})),
    )
    .await;
    let session = rest
        .ok(reqwest::Method::POST, "/sessions", Some(json!({})))
        .await["id"]
        .as_str()
        .expect("session id")
        .to_owned();
    let (browser, browser_token) = rest.participant(&hook_url).await;
    let (phone, phone_token) = rest.participant(&hook_url).await;
    for p in [&browser, &phone] {
        rest.ok(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/participants/{p}"),
            Some(json!({"sessionId": session})),
        )
        .await;
    }
    let level = talker(app.http, &browser_token, "speaker-browser").await;
    let call = dial(app.sip, &Dial::with_token(&phone_token))
        .await
        .expect("the call is answered");
    call.play_tone(0.0);

    // Turns: the phone (a 440 Hz tone), the browser, the phone again.
    for (who, phone_talks) in [(&phone, true), (&browser, false), (&phone, true)] {
        if phone_talks {
            level.store(SILENCE, Ordering::Relaxed);
            call.play_tone(440.0);
        } else {
            call.play_tone(0.0);
            level.store(TALK, Ordering::Relaxed);
        }
        eventually(
            &format!("the dominant speaker becomes {who}"),
            DEADLINE,
            || async { rest.speaker(&session).await.1["participantId"] == who.as_str() },
        )
        .await;
        let (_, body) = rest.speaker(&session).await;
        assert_eq!(body["phone"], phone_talks, "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            rest.speaker(&session).await.1["participantId"],
            who.as_str()
        );
    }
    eventually("three onActiveSpeaker webhooks", DEADLINE, || async {
        received(&hooks, "onActiveSpeaker").len() >= 3
    })
    .await;
    let announced = received(&hooks, "onActiveSpeaker");
    let flags: Vec<(&str, bool)> = announced
        .iter()
        .map(|(p, b)| (p.as_str(), b["phone"] == true))
        .collect();
    assert_eq!(
        flags,
        [
            (phone.as_str(), true),
            (browser.as_str(), false),
            (phone.as_str(), true)
        ],
        "{announced:?}"
    );
    call.hangup().await;
    app.stop().await.expect("stop");
}
