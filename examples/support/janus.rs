//! The Janus mode of the media load tool (`--server janus`): the same synthetic devices
//! (`Dev`: two str0m `Rtc`s, the same frames, schedule and counters) signalled through the
//! Janus API over its WebSocket transport (sub-protocol `janus-protocol`) to the VideoRoom
//! plugin, so the figures compare with the patchbay mode's one for one.
//!
//! This module owns the Janus signalling only:
//! - `create_rooms`: a control connection (one Janus session, one VideoRoom handle) that creates
//!   one room per load-tool session (`publishers` = max(20, participants), Opus and VP8, no
//!   bitrate cap, no periodic keyframe requests) and destroys them at the end;
//! - `run_device`: per device, one Janus session with two handles. The publisher handle joins
//!   the room as publisher (feed id = device index + 1) and publishes: str0m offers audio (and
//!   video for a video publisher) sendonly, Janus answers. The subscriber handle is VideoRoom
//!   1.x's multistream subscriber: one handle and one PeerConnection carrying every other
//!   publisher's streams (Janus offers, str0m answers, `start` carries the answer), the same
//!   shape as a patchbay device's single subscribe connection. It joins once the tool says so:
//!   when every publisher of its room is publishing and Janus reported each publisher's
//!   PeerConnection up (`webrtcup`; joins sent earlier got "No such feed" on a busy machine),
//!   or, for a late participant, when the tool "subscribes" it after everyone else hears
//!   everyone (that moment stands in for the REST subscription PUT in the late figures).
//!
//! Offers and answers carry their candidates (`trickle: false`); trickled candidates from
//! Janus are applied too. Keep-alives go every 20 s.
#![allow(clippy::too_many_arguments)]

use super::*;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PLUGIN: &str = "janus.plugin.videoroom";
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The VideoRoom room id of a load-tool session.
pub fn room_id(session: usize) -> u64 {
    1000 + session as u64
}

/// The publisher (feed) id of a device.
pub fn feed_id(idx: u32) -> u64 {
    u64::from(idx) + 1
}

async fn connect(url: &str) -> Result<Ws, String> {
    let mut req = url
        .into_client_request()
        .map_err(|e| format!("janus url: {e}"))?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let connect = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(req),
    );
    match connect.await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("janus websocket: {e}")),
        Err(_) => Err("janus websocket: connect timed out".into()),
    }
}

/// The error a Janus reply carries, at the API level or in the plugin's data.
fn reply_error(v: &Value) -> Option<String> {
    if v["janus"] == "error" {
        return Some(format!("janus error: {}", v["error"]));
    }
    let data = &v["plugindata"]["data"];
    data.get("error")
        .map(|e| format!("videoroom error {}: {e}", data["error_code"]))
}

/// The setup connection: one Janus session with one VideoRoom handle.
pub struct Control {
    ws: Ws,
    session: u64,
    handle: u64,
    next: u64,
}

impl Control {
    /// Sends a request and waits for its reply (acks skipped; other messages ignored).
    async fn call(&mut self, mut msg: Value) -> Result<Value, String> {
        self.next += 1;
        let txn = format!("c{}", self.next);
        msg["transaction"] = json!(txn);
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("janus send: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let next = tokio::time::timeout_at(deadline.into(), self.ws.next()).await;
            let text = match next {
                Err(_) => return Err(format!("janus: no reply to {msg}")),
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => return Err(format!("janus websocket: {e}")),
                Ok(None) => return Err("janus closed the websocket".into()),
            };
            let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            if v["transaction"] != txn.as_str() || v["janus"] == "ack" {
                continue;
            }
            if let Some(e) = reply_error(&v) {
                return Err(e);
            }
            return Ok(v);
        }
    }

    async fn message(&mut self, body: Value) -> Result<Value, String> {
        let (session, handle) = (self.session, self.handle);
        self.call(
            json!({"janus": "message", "session_id": session, "handle_id": handle, "body": body}),
        )
        .await
    }

    /// Destroys the rooms and the control session.
    pub async fn finish(mut self, rooms: usize) {
        for s in 0..rooms {
            let _ = self
                .message(json!({"request": "destroy", "room": room_id(s)}))
                .await;
        }
        let session = self.session;
        let _ = self
            .call(json!({"janus": "destroy", "session_id": session}))
            .await;
        let _ = self.ws.close(None).await;
    }
}

/// Connects the control session and creates one room per load-tool session.
pub async fn create_rooms(url: &str, rooms: usize, participants: usize) -> Result<Control, String> {
    let ws = connect(url).await?;
    let mut c = Control {
        ws,
        session: 0,
        handle: 0,
        next: 0,
    };
    let v = c.call(json!({"janus": "create"})).await?;
    c.session = v["data"]["id"].as_u64().ok_or("create: no session id")?;
    let session = c.session;
    let v = c
        .call(json!({"janus": "attach", "session_id": session, "plugin": PLUGIN}))
        .await?;
    c.handle = v["data"]["id"].as_u64().ok_or("attach: no handle id")?;
    for s in 0..rooms {
        let v = c
            .message(json!({
                "request": "create",
                "room": room_id(s),
                "description": format!("media-load-{s}"),
                "publishers": participants.max(20),
                "audiocodec": "opus",
                "videocodec": "vp8",
                "bitrate": 0,
                "fir_freq": 0,
                "notify_joining": false,
                "permanent": false,
            }))
            .await?;
        if v["plugindata"]["data"]["videoroom"] != "created" {
            return Err(format!("room {} not created: {v}", room_id(s)));
        }
    }
    Ok(c)
}

/// What a transaction of a device was.
enum Step {
    Create,
    AttachPublish,
    AttachSubscribe,
    JoinPublisher,
    Publish(SdpPendingOffer),
    JoinSubscriber,
    Start,
    Other,
}

struct JanusDev {
    dev: Dev,
    room: u64,
    /// The feeds this device's subscriber takes (every other publisher of its room).
    feeds: Vec<u64>,
    session: Option<u64>,
    pub_handle: Option<u64>,
    sub_handle: Option<u64>,
    /// The tool said to subscribe, and whether the join went out.
    go: bool,
    sub_joined: bool,
    txns: HashMap<String, Step>,
    next: u64,
}

impl JanusDev {
    fn send(&mut self, mut msg: Value, step: Step) -> String {
        self.next += 1;
        let txn = format!("t{}", self.next);
        msg["transaction"] = json!(txn);
        if let Some(s) = self.session {
            msg["session_id"] = json!(s);
        }
        self.txns.insert(txn, step);
        msg.to_string()
    }

    fn message(&mut self, handle: u64, body: Value, jsep: Option<Value>, step: Step) -> String {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        self.send(msg, step)
    }

    /// The subscriber's join, once told to and attached.
    fn maybe_subscribe(&mut self) -> Option<String> {
        if !self.go || self.sub_joined {
            return None;
        }
        let handle = self.sub_handle?;
        self.sub_joined = true;
        let streams: Vec<Value> = self.feeds.iter().map(|f| json!({"feed": f})).collect();
        let body = json!({"request": "join", "ptype": "subscriber", "room": self.room, "streams": streams});
        Some(self.message(handle, body, None, Step::JoinSubscriber))
    }

    fn on_text(&mut self, text: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.dev
                .rpc_error(format!("unparsable: {}", &text[..text.len().min(100)]));
            return out;
        };
        let kind = v["janus"].as_str().unwrap_or_default();
        match kind {
            "webrtcup" => {
                if v["sender"].as_u64().is_some() && v["sender"].as_u64() == self.pub_handle {
                    self.dev.progress.server_up.store(true, Ordering::Relaxed);
                }
                return out;
            }
            "ack" | "media" | "slowlink" | "detached" => return out,
            "hangup" => {
                let side = side(v["sender"].as_u64() == self.sub_handle);
                self.dev
                    .rtc_error(format!("janus hung up the {side} handle: {}", v["reason"]));
                return out;
            }
            "trickle" => {
                self.on_trickle(&v);
                return out;
            }
            _ => {}
        }
        let step = v["transaction"]
            .as_str()
            .and_then(|t| self.txns.remove(t))
            .unwrap_or(Step::Other);
        if let Some(e) = reply_error(&v) {
            self.dev.rpc_error(e);
            return out;
        }
        let result = match step {
            Step::Create => v["data"]["id"]
                .as_u64()
                .ok_or_else(|| "create: no session id".to_owned())
                .map(|id| {
                    self.session = Some(id);
                    for (step, _) in [(Step::AttachPublish, 0), (Step::AttachSubscribe, 1)] {
                        let msg = json!({"janus": "attach", "plugin": PLUGIN});
                        out.push(self.send(msg, step));
                    }
                }),
            Step::AttachPublish => v["data"]["id"]
                .as_u64()
                .ok_or_else(|| "attach: no handle id".to_owned())
                .map(|h| {
                    self.pub_handle = Some(h);
                    let body = json!({
                        "request": "join",
                        "ptype": "publisher",
                        "room": self.room,
                        "id": feed_id(self.dev.spec.idx),
                        "display": format!("load-{}", self.dev.spec.idx),
                    });
                    out.push(self.message(h, body, None, Step::JoinPublisher));
                }),
            Step::AttachSubscribe => v["data"]["id"]
                .as_u64()
                .ok_or_else(|| "attach: no handle id".to_owned())
                .map(|h| self.sub_handle = Some(h)),
            Step::JoinPublisher if kind == "event" => self.publish(now).map(|m| out.push(m)),
            Step::Publish(pending) if kind == "event" => match v["jsep"]["sdp"].as_str() {
                Some(sdp) => self
                    .dev
                    .accept_publish_answer(pending, sdp, now)
                    .map(|()| self.dev.publish_negotiated()),
                None => Err(format!("publish: no answer in {v}")),
            },
            Step::JoinSubscriber | Step::Start | Step::Other if kind == "event" => {
                // Any event with an offer is for the subscriber (the first after the join, and
                // renegotiations): answer it with `start`.
                match (v["jsep"]["type"].as_str(), v["jsep"]["sdp"].as_str()) {
                    (Some("offer"), Some(sdp)) => {
                        self.dev.accept_sub_offer(sdp, now, false).map(|answer| {
                            let h = self.sub_handle.unwrap_or_default();
                            let jsep = json!({"type": "answer", "sdp": answer, "trickle": false});
                            let body = json!({"request": "start"});
                            out.push(self.message(h, body, Some(jsep), Step::Start));
                        })
                    }
                    _ => Ok(()),
                }
            }
            // Replies we need nothing from (keep-alive acks, `started`, `publishers` events).
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.dev.rpc_error(e);
        }
        if let Some(m) = self.maybe_subscribe() {
            out.push(m);
        }
        out
    }

    fn publish(&mut self, now: Instant) -> Result<String, String> {
        let h = self.pub_handle.ok_or("publish before attach")?;
        let (offer, pending) = self.dev.publish_media_offer(now)?;
        let jsep = json!({"type": "offer", "sdp": offer, "trickle": false});
        let body = json!({"request": "publish"});
        Ok(self.message(h, body, Some(jsep), Step::Publish(pending)))
    }

    fn on_trickle(&mut self, v: &Value) {
        let c = &v["candidate"];
        if c["completed"] == true {
            return;
        }
        let Some(line) = c["candidate"].as_str() else {
            return;
        };
        let line = line.strip_prefix("a=").unwrap_or(line);
        let Ok(cand) = Candidate::from_sdp_string(line) else {
            self.dev
                .rpc_error(format!("unparsable trickled candidate {line}"));
            return;
        };
        let now = Instant::now();
        if v["sender"].as_u64() == self.sub_handle {
            self.dev.subscribe.add_remote_candidate(cand);
            self.dev.drain(true, now);
        } else {
            self.dev.publish.add_remote_candidate(cand);
            self.dev.drain(false, now);
        }
    }
}

/// One synthetic device against Janus; the loop mirrors `run_device`'s.
pub async fn run_device(
    spec: Spec,
    url: String,
    feeds: Vec<u64>,
    window: Arc<Window>,
    progress: Arc<Progress>,
    pattern: Pattern,
    media_ip: std::net::IpAddr,
    mut go: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> DevResult {
    let idx = spec.idx;
    let fail = |e: String| {
        progress.failed.store(true, Ordering::Relaxed);
        DevResult {
            idx,
            rpc_errors: vec![e],
            ..Default::default()
        }
    };
    let mut ws = match connect(&url).await {
        Ok(ws) => ws,
        Err(e) => return fail(e),
    };
    let room = room_id(spec.session);
    let dev = match Dev::new(spec, window, progress.clone(), pattern, false, media_ip).await {
        Ok(d) => d,
        Err(e) => return fail(format!("sockets: {e}")),
    };
    let mut j = JanusDev {
        dev,
        room,
        feeds,
        session: None,
        pub_handle: None,
        sub_handle: None,
        go: false,
        sub_joined: false,
        txns: HashMap::new(),
        next: 0,
    };
    let mut pub_buf = vec![0u8; 65536];
    let mut sub_buf = vec![0u8; 65536];
    let mut pub_packets = Vec::new();
    let mut sub_packets = Vec::new();
    let mut outgoing = vec![j.send(json!({"janus": "create"}), Step::Create)];
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.tick().await;
    loop {
        for msg in outgoing.drain(..) {
            if ws.send(Message::text(msg)).await.is_err() {
                j.dev.rpc_error("websocket send failed".into());
            }
        }
        let wake = j.dev.next_wakeup();
        tokio::select! {
            _ = stop.changed() => break,
            r = go.changed(), if !j.go => {
                if r.is_ok() && *go.borrow() {
                    j.go = true;
                    outgoing.extend(j.maybe_subscribe());
                }
            }
            _ = keepalive.tick() => {
                if j.session.is_some() {
                    outgoing.push(j.send(json!({"janus": "keepalive"}), Step::Other));
                }
            }
            msg = ws.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => outgoing = j.on_text(t.as_str(), now),
                    Some(Ok(Message::Close(c))) => {
                        j.dev.rpc_error(format!("janus closed the websocket: {c:?}"));
                        progress.failed.store(true, Ordering::Relaxed);
                        let _ = stop.changed().await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        j.dev.rpc_error(format!("websocket: {e}"));
                        break;
                    }
                    None => break,
                }
            }
            r = j.dev.pub_sock.recv(&mut pub_buf, &mut pub_packets) => {
                let now = Instant::now();
                if let Err(e) = r {
                    j.dev.rtc_error(format!("publish link: {e}"));
                }
                for (src, p) in pub_packets.drain(..) {
                    j.dev.on_datagram(false, src, &p, now);
                }
            }
            r = j.dev.sub_sock.recv(&mut sub_buf, &mut sub_packets) => {
                let now = Instant::now();
                if let Err(e) = r {
                    j.dev.rtc_error(format!("subscribe link: {e}"));
                }
                for (src, p) in sub_packets.drain(..) {
                    j.dev.on_datagram(true, src, &p, now);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        j.dev.tick(Instant::now());
    }
    // Closing the transport destroys the Janus session and its handles.
    let _ = ws.close(None).await;
    j.dev.res.idx = idx;
    j.dev.res
}
