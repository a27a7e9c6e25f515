//! The switchboard: a contact-centre customer backend with an operator page that shows who hears
//! whom in one patchbay session and re-wires it by clicking. It uses only patchbay's public REST
//! API and webhooks, as a customer's backend would; the API credentials never reach a page.
//!
//! ```sh
//! cargo run --release -- serve --webhook-allow-network 127.0.0.1   # terminal 1: prints the dev credentials; webhooks come here
//! (cd examples/switchboard && npm ci && npm run build)   # once: bundles Bandwidth's browser SDK
//! cargo run --release --example switchboard -- --username U --password P --webhook-secret whsec_…
//! # operator:     http://127.0.0.1:3001/
//! # participants: http://127.0.0.1:3001/participant.html (one tab each: caller, agent, supervisor)
//! ```
//!
//! What it owns:
//! - one session, created on first use; every participant it creates gets `callbackUrl` pointing
//!   back at this backend's `/webhooks`, so connection and publication state come from
//!   patchbay's webhooks (signature checked with `--webhook-secret`; without it the deliveries
//!   are accepted unverified and the operator page says so);
//! - each participant's role (caller, agent, supervisor), which patchbay does not know: the
//!   presets are computed from it and applied in one batch `PUT …/sessions/{s}/subscriptions`;
//! - "talking": participant pages report their own outgoing audio level here every half second;
//!   phones cannot, so a phone's talking state is shown as unknown.
//!
//! Leave deletes the participant (its token is revoked, its seat in the session freed).
//!
//! Limits (it is a demo): one session; roles and live state are kept in memory, so a restart
//! forgets them; presets wire only participants this backend created; clicking a cell turns a
//! session-wide rule into an explicit list of today's members (a later joiner is not heard by
//! that member until a preset or a click adds it).
#![allow(clippy::disallowed_methods)] // a customer backend reads its own clock

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, get_service, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::Mutex;

#[derive(Parser, Clone)]
struct Args {
    /// patchbay's REST base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    patchbay: String,
    /// The account to use (the dev account by default).
    #[arg(long, default_value = "dev")]
    account: String,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// The account's webhook secret (`whsec_…`, printed with the credentials). Without it,
    /// webhooks are accepted without checking their signature.
    #[arg(long)]
    webhook_secret: Option<String>,
    /// Where this backend listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// The URL patchbay posts webhooks to; default `http://<listen address>/webhooks`.
    #[arg(long)]
    callback_url: Option<String>,
    /// patchbay's SIP address, for the dial-in command shown for phones.
    #[arg(long, default_value = "127.0.0.1:5060")]
    sip: String,
}

/// A participant's part in the contact-centre call.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Caller,
    Agent,
    Supervisor,
}

/// Contact-centre wirings, each a rule "does a listener hear a speaker".
#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Preset {
    /// The supervisor hears everyone; nobody hears the supervisor.
    Monitor,
    /// As monitor, but agents hear the supervisor too.
    Whisper,
    /// Everyone hears everyone.
    Barge,
}

impl Preset {
    fn hears(self, listener: Role, speaker: Role) -> bool {
        match self {
            Preset::Monitor => speaker != Role::Supervisor,
            Preset::Whisper => speaker != Role::Supervisor || listener == Role::Agent,
            Preset::Barge => true,
        }
    }
}

/// What this backend knows about a participant it created.
struct Member {
    name: String,
    role: Role,
    phone: bool,
    /// Devices connected now (from onConnect / onLeave / onDisconnect).
    devices: BTreeSet<String>,
    /// Streams published now: stream id -> alias (from onStreamPublished / onStreamUnpublished).
    streams: BTreeMap<String, Option<String>>,
    /// The page's last reported outgoing audio level (RMS, 0..1) and when.
    level: Option<(f64, Instant)>,
}

#[derive(Default)]
struct Board {
    session: Option<String>,
    members: BTreeMap<String, Member>,
    webhooks_accepted: u64,
    webhooks_rejected: u64,
}

struct Backend {
    args: Args,
    callback_url: String,
    http: reqwest::Client,
    board: Mutex<Board>,
}

type Failure = (StatusCode, String);

fn bad_gateway(e: String) -> Failure {
    (StatusCode::BAD_GATEWAY, e)
}

impl Backend {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let url = format!(
            "{}/v1/accounts/{}{path}",
            self.args.patchbay, self.args.account
        );
        let mut req = self
            .http
            .request(method, url)
            .basic_auth(&self.args.username, Some(&self.args.password));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| bad_gateway(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| bad_gateway(e.to_string()))?;
        if !status.is_success() {
            return Err(bad_gateway(format!("patchbay answered {status}: {text}")));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The switchboard's session, created on first use.
    async fn session(&self) -> Result<String, Failure> {
        if let Some(id) = self.board.lock().await.session.clone() {
            return Ok(id);
        }
        let created = self
            .call(
                reqwest::Method::POST,
                "/sessions",
                Some(json!({"tag": "switchboard"})),
            )
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| bad_gateway("no session id".into()))?
            .to_owned();
        let mut board = self.board.lock().await;
        Ok(board.session.get_or_insert(id).clone())
    }

    /// Creates a participant named `name`, adds it to the session hearing everyone, and
    /// remembers it. Returns its id and device token.
    async fn enter(&self, join: &JoinRequest, phone: bool) -> Result<(String, Value), Failure> {
        let name: String = join.name.trim().chars().take(50).collect();
        if name.is_empty() {
            return Err((StatusCode::BAD_REQUEST, "name: must not be empty".into()));
        }
        let session = self.session().await?;
        let permissions = if phone {
            json!(["AUDIO"])
        } else {
            json!(["AUDIO", "VIDEO"])
        };
        let created = self
            .call(
                reqwest::Method::POST,
                "/participants",
                Some(json!({
                    "tag": name,
                    "publishPermissions": permissions,
                    "callbackUrl": self.callback_url,
                })),
            )
            .await?;
        let id = created["participant"]["id"]
            .as_str()
            .ok_or_else(|| bad_gateway("no participant id".into()))?
            .to_owned();
        // Remembered before it can connect, so that no webhook about it is ignored.
        self.board.lock().await.members.insert(
            id.clone(),
            Member {
                name,
                role: join.role,
                phone,
                devices: BTreeSet::new(),
                streams: BTreeMap::new(),
                level: None,
            },
        );
        let added = self
            .call(
                reqwest::Method::PUT,
                &format!("/sessions/{session}/participants/{id}"),
                Some(json!({"sessionId": session})),
            )
            .await;
        if let Err(e) = added {
            // e.g. the session is full: do not keep a participant that is in no session
            self.leave_participant(&id).await.ok();
            return Err(e);
        }
        Ok((id, created["token"].clone()))
    }

    async fn leave_participant(&self, id: &str) -> Result<(), Failure> {
        self.board.lock().await.members.remove(id);
        self.call(
            reqwest::Method::DELETE,
            &format!("/participants/{id}"),
            None,
        )
        .await
        .map(|_| ())
    }

    /// Applies new subscription rules to several members at once (all or nothing).
    async fn rewire(&self, session: &str, rules: BTreeMap<String, Value>) -> Result<(), Failure> {
        self.call(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/subscriptions"),
            Some(serde_json::to_value(rules).unwrap_or_default()),
        )
        .await
        .map(|_| ())
    }
}

#[derive(Deserialize)]
struct JoinRequest {
    name: String,
    role: Role,
}

async fn join(
    State(backend): State<Arc<Backend>>,
    Json(body): Json<JoinRequest>,
) -> Result<Json<Value>, Failure> {
    let (id, token) = backend.enter(&body, false).await?;
    let websocket_url = backend.args.patchbay.replacen("http", "ws", 1);
    Ok(Json(
        json!({"participantId": id, "token": token, "websocketUrl": websocket_url}),
    ))
}

/// A phone's way in: an audio-only participant; the answer says how to dial in with it.
async fn phone(
    State(backend): State<Arc<Backend>>,
    Json(body): Json<JoinRequest>,
) -> Result<Json<Value>, Failure> {
    let (id, token) = backend.enter(&body, true).await?;
    let jwt = token.as_str().unwrap_or_default();
    let sip = &backend.args.sip;
    Ok(Json(json!({
        "participantId": id,
        "token": token,
        "userToUser": format!("{jwt};encoding=jwt"),
        "command": format!("cargo run --release --example phone -- --sip {sip} --token {jwt} --tone 600 --seconds 120"),
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LeaveRequest {
    participant_id: String,
}

/// Deletes the participant. The body is parsed by hand: pages also send it with
/// `navigator.sendBeacon` when closed, which cannot set a JSON content type.
async fn leave(State(backend): State<Arc<Backend>>, body: Bytes) -> Result<StatusCode, Failure> {
    let req: LeaveRequest = serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    if !backend
        .board
        .lock()
        .await
        .members
        .contains_key(&req.participant_id)
    {
        return Err((StatusCode::NOT_FOUND, "no such participant".into()));
    }
    backend.leave_participant(&req.participant_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LevelReport {
    participant_id: String,
    level: f64,
}

async fn level(State(backend): State<Arc<Backend>>, Json(report): Json<LevelReport>) -> StatusCode {
    let mut board = backend.board.lock().await;
    match board.members.get_mut(&report.participant_id) {
        Some(m) if report.level.is_finite() => {
            m.level = Some((report.level.clamp(0.0, 1.0), Instant::now()));
            StatusCode::NO_CONTENT
        }
        Some(_) => StatusCode::BAD_REQUEST,
        None => StatusCode::NOT_FOUND,
    }
}

/// Checks a Standard Webhooks signature: `v1,<base64 HMAC-SHA256(key, "id.timestamp.body")>`,
/// the key being the base64 part of `whsec_…`, the timestamp within five minutes of now.
fn signature_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id").ok_or("no webhook-id")?;
    let timestamp = header("webhook-timestamp").ok_or("no webhook-timestamp")?;
    let signatures = header("webhook-signature").ok_or("no webhook-signature")?;
    let sent: i64 = timestamp.parse().map_err(|_| "bad webhook-timestamp")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - sent).abs() > 300 {
        return Err("webhook-timestamp too far from now");
    }
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| "the webhook secret is not whsec_<base64>")?;
    for candidate in signatures.split_whitespace() {
        let Some(sig) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            continue;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| "bad key")?;
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err("no matching signature")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Webhook {
    event: String,
    participant_id: String,
    device_id: Option<String>,
    stream_id: Option<String>,
    alias: Option<String>,
}

async fn webhook(
    State(backend): State<Arc<Backend>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut board = backend.board.lock().await;
    if let Some(secret) = &backend.args.webhook_secret {
        if let Err(why) = signature_ok(secret, &headers, &body) {
            board.webhooks_rejected += 1;
            eprintln!("switchboard: rejected a webhook: {why}");
            return StatusCode::UNAUTHORIZED;
        }
    }
    let Ok(hook) = serde_json::from_slice::<Webhook>(&body) else {
        board.webhooks_rejected += 1;
        return StatusCode::BAD_REQUEST;
    };
    board.webhooks_accepted += 1;
    // Events about participants that already left are acknowledged and dropped.
    if let Some(m) = board.members.get_mut(&hook.participant_id) {
        match (hook.event.as_str(), hook.device_id, hook.stream_id) {
            ("onConnect", Some(device), _) => {
                m.devices.insert(device);
            }
            ("onLeave" | "onDisconnect", Some(device), _) => {
                m.devices.remove(&device);
                if m.devices.is_empty() {
                    m.streams.clear();
                }
            }
            ("onStreamPublished", _, Some(stream)) => {
                m.streams.insert(stream, hook.alias);
            }
            ("onStreamUnpublished", _, Some(stream)) => {
                m.streams.remove(&stream);
            }
            _ => {}
        }
    }
    StatusCode::NO_CONTENT
}

/// Everything the operator page draws: members with live state, each member's rules, and
/// patchbay's compiled routes, fetched fresh.
async fn state(State(backend): State<Arc<Backend>>) -> Result<Json<Value>, Failure> {
    let session = backend.board.lock().await.session.clone();
    let (listing, routes) = match &session {
        Some(s) => (
            backend
                .call(
                    reqwest::Method::GET,
                    &format!("/sessions/{s}/participants"),
                    None,
                )
                .await?,
            backend
                .call(reqwest::Method::GET, &format!("/sessions/{s}/routes"), None)
                .await?,
        ),
        None => (json!([]), json!({"subscribers": []})),
    };
    let board = backend.board.lock().await;
    let members: Vec<Value> = listing
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let id = p["id"].as_str().unwrap_or_default();
            let known = board.members.get(id);
            let talking = known.and_then(|m| {
                if m.phone {
                    return None; // a phone does not report its level
                }
                Some(m.level.is_some_and(|(level, at)| {
                    level > 0.02 && at.elapsed() < Duration::from_secs(2)
                }))
            });
            json!({
                "id": id,
                "name": known.map(|m| m.name.clone()).or_else(|| p["tag"].as_str().map(str::to_owned)),
                "role": known.map(|m| m.role),
                "phone": known.is_some_and(|m| m.phone),
                "connected": known.is_some_and(|m| !m.devices.is_empty()),
                "streams": known.map(|m| m.streams.iter().map(|(id, alias)| json!({"streamId": id, "alias": alias})).collect::<Vec<_>>()).unwrap_or_default(),
                "talking": talking,
                "subscriptions": p["subscriptions"],
            })
        })
        .collect();
    Ok(Json(json!({
        "sessionId": session,
        "members": members,
        "routes": routes,
        "webhooks": {
            "verified": backend.args.webhook_secret.is_some(),
            "accepted": board.webhooks_accepted,
            "rejected": board.webhooks_rejected,
        },
    })))
}

#[derive(Deserialize)]
struct PresetRequest {
    preset: Preset,
}

/// Applies a preset to every member this backend knows the role of, in one batch.
async fn preset(
    State(backend): State<Arc<Backend>>,
    Json(req): Json<PresetRequest>,
) -> Result<StatusCode, Failure> {
    let session = backend.session().await?;
    let roles: Vec<(String, Role)> = {
        let board = backend.board.lock().await;
        board
            .members
            .iter()
            .map(|(id, m)| (id.clone(), m.role))
            .collect()
    };
    let rules = roles
        .iter()
        .map(|(listener, listener_role)| {
            let rule = if matches!(req.preset, Preset::Barge) {
                json!({"sessionId": session})
            } else {
                let hears: Vec<Value> = roles
                    .iter()
                    .filter(|(speaker, speaker_role)| {
                        speaker != listener && req.preset.hears(*listener_role, *speaker_role)
                    })
                    .map(|(speaker, _)| json!({"participantId": speaker}))
                    .collect();
                if hears.is_empty() {
                    json!({})
                } else {
                    json!({"participants": hears})
                }
            };
            (listener.clone(), rule)
        })
        .collect();
    backend.rewire(&session, rules).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest {
    listener: String,
    speaker: String,
    /// A stream alias of the speaker to switch; absent: the whole participant.
    alias: Option<String>,
    on: bool,
}

/// Switches one cell of the matrix: whether `listener` hears `speaker` (or one of its stream
/// aliases). The listener's rule becomes an explicit list of publishers (a session-wide rule
/// is expanded to the current members first), sent through the batch endpoint.
async fn wire(
    State(backend): State<Arc<Backend>>,
    Json(req): Json<WireRequest>,
) -> Result<StatusCode, Failure> {
    let session = backend.session().await?;
    let listing = backend
        .call(
            reqwest::Method::GET,
            &format!("/sessions/{session}/participants"),
            None,
        )
        .await?;
    let members: Vec<&Value> = listing.as_array().into_iter().flatten().collect();
    let ids = |v: &Value| v["id"].as_str().map(str::to_owned);
    let listener = members
        .iter()
        .find(|m| ids(m).as_deref() == Some(req.listener.as_str()))
        .ok_or((StatusCode::NOT_FOUND, "listener: not in the session".into()))?;
    if !members
        .iter()
        .any(|m| ids(m).as_deref() == Some(req.speaker.as_str()))
    {
        return Err((StatusCode::NOT_FOUND, "speaker: not in the session".into()));
    }
    // publisher -> aliases heard (empty: all of its streams)
    let rules = &listener["subscriptions"];
    let mut hears: BTreeMap<String, Vec<String>> = BTreeMap::new();
    match rules["participants"].as_array() {
        Some(list) if !list.is_empty() => {
            for p in list {
                let aliases = p["streamAliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                if let Some(id) = p["participantId"].as_str() {
                    hears.insert(id.to_owned(), aliases);
                }
            }
        }
        _ if rules["sessionId"].is_string() => {
            for m in &members {
                if let Some(id) = ids(m).filter(|id| *id != req.listener) {
                    hears.insert(id, Vec::new());
                }
            }
        }
        _ => {}
    }
    match (&req.alias, req.on) {
        (None, true) => {
            hears.insert(req.speaker.clone(), Vec::new());
        }
        (None, false) => {
            hears.remove(&req.speaker);
        }
        (Some(alias), on) => {
            // the speaker's aliases published now, for expanding "all of its streams"
            let published: Vec<String> = backend
                .board
                .lock()
                .await
                .members
                .get(&req.speaker)
                .map(|m| m.streams.values().flatten().cloned().collect())
                .unwrap_or_default();
            let current = hears.remove(&req.speaker);
            let mut aliases: BTreeSet<String> = match current {
                Some(list) if list.is_empty() => published.into_iter().collect(),
                Some(list) => list.into_iter().collect(),
                None => BTreeSet::new(),
            };
            if on {
                aliases.insert(alias.clone());
            } else {
                aliases.remove(alias);
            }
            if !aliases.is_empty() {
                hears.insert(req.speaker.clone(), aliases.into_iter().collect());
            }
        }
    }
    let rule = if hears.is_empty() {
        json!({})
    } else {
        let list: Vec<Value> = hears
            .into_iter()
            .map(|(id, aliases)| {
                if aliases.is_empty() {
                    json!({"participantId": id})
                } else {
                    json!({"participantId": id, "streamAliases": aliases})
                }
            })
            .collect();
        json!({"participants": list})
    };
    backend
        .rewire(&session, BTreeMap::from([(req.listener, rule)]))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let callback_url = args
        .callback_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}/webhooks"));
    if args.webhook_secret.is_none() {
        println!("switchboard: no --webhook-secret: webhooks are accepted WITHOUT verification");
    }
    let backend = Arc::new(Backend {
        args,
        callback_url,
        http: reqwest::Client::new(),
        board: Mutex::new(Board::default()),
    });
    let pages = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/switchboard");
    let app = Router::new()
        .route("/api/join", post(join))
        .route("/api/phone", post(phone))
        .route("/api/leave", post(leave))
        .route("/api/level", post(level))
        .route("/api/state", get(state))
        .route("/api/preset", post(preset))
        .route("/api/wire", post(wire))
        .route("/webhooks", post(webhook))
        .fallback_service(get_service(tower_http::services::ServeDir::new(pages)))
        .with_state(backend);
    println!(
        "switchboard: operator page http://{local}/ , participants http://{local}/participant.html"
    );
    axum::serve(listener, app).await?;
    Ok(())
}
