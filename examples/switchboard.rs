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
//! - each participant's role (caller, agent, supervisor), which patchbay does not know;
//! - each listener's *policy*, which patchbay does not know either: a default (everyone, or by
//!   role as the Monitor or Whisper preset says) that also decides about later joiners, plus the
//!   operator's clicked changes per speaker (hear nothing, all, or some stream aliases). The
//!   backend compiles every policy to patchbay subscriptions whenever a policy or the membership
//!   changes, and sends them in one batch `PUT …/sessions/{s}/subscriptions`: a listener that
//!   hears everyone with no change keeps the session-wide rule `{"sessionId": s}` (patchbay adds
//!   later joiners itself); any other gets the explicit list of today's members it hears,
//!   recompiled when someone joins or leaves;
//! - "speaking": the session's dominant speaker, browsers and phones alike, as patchbay decides
//!   it from the audio itself (`GET …/sessions/{s}/activeSpeaker`, read with the rest of the
//!   state; the same change also comes as the opt-in `onActiveSpeaker` webhook);
//! - "quality": patchbay's quality level of each member (`GET …/participants/{p}/quality`'s
//!   `level`: good, fair or poor; a phone's from its RTP leg), n/a when nothing current is
//!   measured.
//!
//! Presets set every listener's default and clear the clicked changes; a newcomer gets the
//! default of the last preset (Barge, everyone hears everyone, before any). The active preset is
//! the one whose wiring is in force with no clicked change; the page marks it, or says "custom".
//!
//! Leave deletes the participant (its token is revoked, its seat in the session freed), and so do
//! a device leaving on purpose (`onLeave`: the SDK's `leave`, a phone's BYE) and a participant
//! left with no device for `--forget-after` seconds after `onDisconnect` (a closed tab whose
//! beacon never came, a connection lost for good). patchbay says `onDisconnect` as soon as a
//! connection drops and keeps the device's media for a while; an SDK that reconnects meanwhile
//! is a new `onConnect`, which keeps the participant.
//!
//! Limits (it is a demo): one session; roles, policies and live state are kept in memory, so a
//! restart forgets them; only participants this backend created are wired by it (one added to
//! its session through the REST API by someone else is heard by session-wide listeners only).
#![allow(clippy::disallowed_methods)] // a customer backend reads its own clock

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, get_service, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use clap::Parser;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
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
    /// A participant whose last device disconnected (`onDisconnect`, not `onLeave`) is deleted
    /// after this many seconds unless a device connects again meanwhile.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    forget_after: u64,
}

/// A participant's part in the contact-centre call.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Caller,
    Agent,
    Supervisor,
}

/// Contact-centre wirings, each a rule "does a listener hear a speaker".
#[derive(Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
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

    fn name(self) -> &'static str {
        match self {
            Preset::Monitor => "monitor",
            Preset::Whisper => "whisper",
            Preset::Barge => "barge",
        }
    }
}

/// What a listener hears of one speaker.
#[derive(Clone, PartialEq, Eq)]
enum Hearing {
    Nothing,
    /// All of the speaker's streams, whatever it publishes later.
    All,
    /// Only the streams with these aliases (never empty: that is `Nothing`).
    Aliases(BTreeSet<String>),
}

impl Hearing {
    fn describe(&self) -> Value {
        match self {
            Hearing::Nothing => json!("nothing"),
            Hearing::All => json!("all"),
            Hearing::Aliases(a) => json!(a),
        }
    }
}

/// Whom a listener hears, as the operator decided it; compiled to patchbay rules by
/// [`Board::compile`].
#[derive(Clone)]
struct Policy {
    /// How it treats any speaker without a change, later joiners included: `Barge` is
    /// "everyone" (the session-wide rule), the others decide by the two roles.
    default: Preset,
    /// The operator's clicks: speaker -> what is heard of it. Never equal to what the default
    /// gives (such a click removes the change instead).
    changes: BTreeMap<String, Hearing>,
}

/// What this backend knows about a participant it created.
struct Member {
    name: String,
    role: Role,
    phone: bool,
    policy: Policy,
    /// Devices connected now (from onConnect / onLeave / onDisconnect).
    devices: BTreeSet<String>,
    /// How many onConnect were seen: a forget timer started at one count is void at another.
    connects: u64,
    /// Streams published now: stream id -> alias (from onStreamPublished / onStreamUnpublished).
    streams: BTreeMap<String, Option<String>>,
}

struct Board {
    session: Option<String>,
    members: BTreeMap<String, Member>,
    /// The default a newcomer gets: that of the last preset applied.
    newcomers: Preset,
    webhooks_accepted: u64,
    webhooks_rejected: u64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            session: None,
            members: BTreeMap::new(),
            newcomers: Preset::Barge,
            webhooks_accepted: 0,
            webhooks_rejected: 0,
        }
    }
}

impl Board {
    /// What `listener`'s default gives for `speaker`, without its changes.
    fn by_default(listener: &Member, speaker: &Member) -> Hearing {
        if listener.policy.default.hears(listener.role, speaker.role) {
            Hearing::All
        } else {
            Hearing::Nothing
        }
    }

    /// What `listener` hears of `speaker`, its changes included.
    fn hearing(&self, listener: &str, speaker: &str) -> Option<Hearing> {
        let l = self.members.get(listener)?;
        let s = self.members.get(speaker)?;
        Some(
            l.policy
                .changes
                .get(speaker)
                .cloned()
                .unwrap_or_else(|| Self::by_default(l, s)),
        )
    }

    /// `listener`'s policy compiled over today's members: the session-wide rule when it hears
    /// everyone with no change, else the explicit list (`{}` when it hears nobody).
    fn compile(&self, session: &str, listener: &str) -> Option<Value> {
        let l = self.members.get(listener)?;
        if l.policy.default == Preset::Barge && l.policy.changes.is_empty() {
            return Some(json!({"sessionId": session}));
        }
        let hears: Vec<Value> = self
            .members
            .keys()
            .filter(|speaker| speaker.as_str() != listener)
            .filter_map(|speaker| match self.hearing(listener, speaker)? {
                Hearing::Nothing => None,
                Hearing::All => Some(json!({"participantId": speaker})),
                Hearing::Aliases(a) => Some(json!({"participantId": speaker, "streamAliases": a})),
            })
            .collect();
        Some(if hears.is_empty() {
            json!({})
        } else {
            json!({"participants": hears})
        })
    }

    /// Every member's compiled rules, for one batch.
    fn compile_all(&self, session: &str) -> BTreeMap<String, Value> {
        self.members
            .keys()
            .filter_map(|id| Some((id.clone(), self.compile(session, id)?)))
            .collect()
    }

    /// The preset in force: every listener has its default and no change.
    fn active_preset(&self) -> Option<Preset> {
        self.members
            .values()
            .all(|m| m.policy.default == self.newcomers && m.policy.changes.is_empty())
            .then_some(self.newcomers)
    }

    /// Forgets a member and every change naming it.
    fn drop_member(&mut self, id: &str) -> bool {
        let known = self.members.remove(id).is_some();
        for m in self.members.values_mut() {
            m.policy.changes.remove(id);
        }
        known
    }

    /// A listener's rule for the page: its default, its changes, whether it is session-wide,
    /// and a one-line summary.
    fn rule_view(&self, id: &str) -> Option<Value> {
        let m = self.members.get(id)?;
        let default = match m.policy.default {
            Preset::Barge => "everyone".to_owned(),
            p => format!("by role: {}", p.name()),
        };
        let n = m.policy.changes.len();
        let session_wide = m.policy.default == Preset::Barge && n == 0;
        let summary = match n {
            0 if session_wide => format!("{default} (session-wide)"),
            0 => default,
            1 => format!("{default} + 1 change"),
            n => format!("{default} + {n} changes"),
        };
        let changes: Vec<Value> = m
            .policy
            .changes
            .iter()
            .map(|(speaker, hearing)| {
                json!({
                    "speaker": speaker,
                    "speakerName": self.members.get(speaker).map(|s| s.name.clone()),
                    "hears": hearing.describe(),
                })
            })
            .collect();
        Some(json!({
            "default": m.policy.default,
            "sessionWide": session_wide,
            "changes": changes,
            "summary": summary,
        }))
    }
}

struct Backend {
    args: Args,
    callback_url: String,
    http: reqwest::Client,
    board: Mutex<Board>,
    /// Held through every change of policies or membership, from compiling to patchbay's
    /// answer, so that batches reach patchbay in the order the board changed. Taken before
    /// `board`, never while holding it.
    wiring: Mutex<()>,
}

type Failure = (StatusCode, String);

fn bad_gateway(e: String) -> Failure {
    (StatusCode::BAD_GATEWAY, e)
}

/// What patchbay answered with an error status.
fn refused(status: reqwest::StatusCode, text: &str) -> Failure {
    bad_gateway(format!("patchbay answered {status}: {text}"))
}

impl Backend {
    /// One REST call to patchbay: its status and body, whatever the status.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(reqwest::StatusCode, String), Failure> {
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
        Ok((status, text))
    }

    /// One REST call that must succeed; its JSON answer (`null` when empty).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let (status, text) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(refused(status, &text));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The switchboard's session, created on first use (with `wiring` held).
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

    /// Creates a participant named `name` with the newcomers' default, adds it to the session
    /// with its compiled rule, and re-sends every member's rules in one batch (those with an
    /// explicit list now list it, or not, as their policy says). Returns its id and token.
    async fn enter(&self, join: &JoinRequest, phone: bool) -> Result<(String, Value), Failure> {
        let name: String = join.name.trim().chars().take(50).collect();
        if name.is_empty() {
            return Err((StatusCode::BAD_REQUEST, "name: must not be empty".into()));
        }
        let _wiring = self.wiring.lock().await;
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
        let rule = {
            let mut board = self.board.lock().await;
            let default = board.newcomers;
            board.members.insert(
                id.clone(),
                Member {
                    name,
                    role: join.role,
                    phone,
                    policy: Policy {
                        default,
                        changes: BTreeMap::new(),
                    },
                    devices: BTreeSet::new(),
                    connects: 0,
                    streams: BTreeMap::new(),
                },
            );
            board.compile(&session, &id).unwrap_or_else(|| json!({}))
        };
        let added = self
            .call(
                reqwest::Method::PUT,
                &format!("/sessions/{session}/participants/{id}"),
                Some(rule),
            )
            .await;
        let wired = match added {
            Ok(_) => self.rewire_all(&session).await,
            Err(e) => Err(e),
        };
        if let Err(e) = wired {
            // e.g. the session is full: do not keep a participant that is in no session
            self.forget(&id).await.ok();
            return Err(e);
        }
        Ok((id, created["token"].clone()))
    }

    /// Deletes a member (`wiring` held): forgets it and every change naming it, deletes it at
    /// patchbay (already gone is fine) and re-sends the others' rules. False: not a member.
    async fn forget(&self, id: &str) -> Result<bool, Failure> {
        let (known, session) = {
            let mut board = self.board.lock().await;
            (board.drop_member(id), board.session.clone())
        };
        if !known {
            return Ok(false);
        }
        let (status, text) = self
            .send(
                reqwest::Method::DELETE,
                &format!("/participants/{id}"),
                None,
            )
            .await?;
        if !status.is_success() && status != reqwest::StatusCode::NOT_FOUND {
            return Err(refused(status, &text));
        }
        if let Some(session) = session {
            self.rewire_all(&session).await?;
        }
        Ok(true)
    }

    /// Deletes a member this backend created. False: it is not (or no longer) one.
    async fn leave_participant(&self, id: &str) -> Result<bool, Failure> {
        let _wiring = self.wiring.lock().await;
        self.forget(id).await
    }

    /// Deletes a member whose last device disconnected `connects` connections ago, if it still
    /// has no device and none connected since.
    async fn forget_if_still_gone(&self, id: &str, connects: u64) {
        let _wiring = self.wiring.lock().await;
        let gone = self
            .board
            .lock()
            .await
            .members
            .get(id)
            .is_some_and(|m| m.devices.is_empty() && m.connects == connects);
        if !gone {
            return;
        }
        match self.forget(id).await {
            Ok(_) => {
                println!("switchboard: deleted {id}: no device came back after its disconnect")
            }
            Err((_, e)) => eprintln!("switchboard: could not delete {id}: {e}"),
        }
    }

    /// Applies new subscription rules to several members at once (all or nothing).
    async fn rewire(&self, session: &str, rules: BTreeMap<String, Value>) -> Result<(), Failure> {
        if rules.is_empty() {
            return Ok(());
        }
        self.call(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/subscriptions"),
            Some(serde_json::to_value(rules).unwrap_or_default()),
        )
        .await
        .map(|_| ())
    }

    /// Compiles every member's policy and sends the rules in one batch (`wiring` held). When
    /// patchbay refuses it because members were deleted or removed behind this backend's back,
    /// they are forgotten and the batch is sent once more.
    async fn rewire_all(&self, session: &str) -> Result<(), Failure> {
        let rules = self.board.lock().await.compile_all(session);
        let Err(refusal) = self.rewire(session, rules).await else {
            return Ok(());
        };
        let path = format!("/sessions/{session}/participants");
        let Ok(listing) = self.call(reqwest::Method::GET, &path, None).await else {
            return Err(refusal);
        };
        let present: BTreeSet<&str> = listing
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str())
            .collect();
        let rules = {
            let mut board = self.board.lock().await;
            let gone: Vec<String> = board
                .members
                .keys()
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect();
            if gone.is_empty() {
                return Err(refusal);
            }
            for id in &gone {
                eprintln!("switchboard: {id} is no longer in the session: forgotten");
                board.drop_member(id);
            }
            board.compile_all(session)
        };
        self.rewire(session, rules).await
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
    if backend.leave_participant(&req.participant_id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err((StatusCode::NOT_FOUND, "no such participant".into()))
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
    // What to do about a member left with no device: delete it now (it left on purpose), or
    // after the grace unless a device connects again (its connection was lost).
    let mut forget: Option<Option<u64>> = None;
    // Events about participants that already left are acknowledged and dropped.
    if let Some(m) = board.members.get_mut(&hook.participant_id) {
        match (hook.event.as_str(), hook.device_id, hook.stream_id) {
            ("onConnect", Some(device), _) => {
                m.devices.insert(device);
                m.connects += 1;
            }
            (event @ ("onLeave" | "onDisconnect"), Some(device), _) => {
                m.devices.remove(&device);
                if m.devices.is_empty() {
                    m.streams.clear();
                    forget = Some((event == "onDisconnect").then_some(m.connects));
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
    drop(board);
    let id = hook.participant_id;
    match forget {
        Some(None) => {
            tokio::spawn(async move {
                match backend.leave_participant(&id).await {
                    Ok(true) => println!("switchboard: deleted {id}: it left"),
                    Ok(false) => {}
                    Err((_, e)) => eprintln!("switchboard: could not delete {id}: {e}"),
                }
            });
        }
        Some(Some(connects)) => {
            let grace = Duration::from_secs(backend.args.forget_after);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                backend.forget_if_still_gone(&id, connects).await;
            });
        }
        None => {}
    }
    StatusCode::NO_CONTENT
}

/// Everything the operator page draws: members with live state and each member's policy, the
/// active preset, and patchbay's compiled routes, fetched fresh.
async fn state(State(backend): State<Arc<Backend>>) -> Result<Json<Value>, Failure> {
    let session = backend.board.lock().await.session.clone();
    let (listing, routes, speaker) = match &session {
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
            backend
                .call(
                    reqwest::Method::GET,
                    &format!("/sessions/{s}/activeSpeaker"),
                    None,
                )
                .await?,
        ),
        None => (json!([]), json!({"subscribers": []}), json!({})),
    };
    // Each member's quality level as patchbay measures it (good / fair / poor, a phone's from
    // its RTP leg; null when nothing current is measured).
    let mut quality: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(s) = &session {
        for p in listing.as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_str() else { continue };
            let path = format!("/sessions/{s}/participants/{id}/quality");
            if let Ok(q) = backend.call(reqwest::Method::GET, &path, None).await {
                quality.insert(id.to_owned(), q["level"].clone());
            }
        }
    }
    let speaking = speaker["participantId"].as_str();
    let board = backend.board.lock().await;
    let members: Vec<Value> = listing
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let id = p["id"].as_str().unwrap_or_default();
            let known = board.members.get(id);
            json!({
                "id": id,
                "name": known.map(|m| m.name.clone()).or_else(|| p["tag"].as_str().map(str::to_owned)),
                "role": known.map(|m| m.role),
                "phone": known.is_some_and(|m| m.phone),
                "connected": known.is_some_and(|m| !m.devices.is_empty()),
                "streams": known.map(|m| m.streams.iter().map(|(id, alias)| json!({"streamId": id, "alias": alias})).collect::<Vec<_>>()).unwrap_or_default(),
                "speaking": speaking == Some(id),
                "quality": quality.get(id).cloned().unwrap_or(Value::Null),
                "rule": board.rule_view(id),
                "subscriptions": p["subscriptions"],
            })
        })
        .collect();
    Ok(Json(json!({
        "sessionId": session,
        "preset": board.active_preset(),
        "newcomers": board.newcomers,
        "members": members,
        "routes": routes,
        "activeSpeaker": {"participantId": speaking, "since": speaker["since"], "phone": speaker["phone"]},
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

/// Applies a preset: every member's default becomes the preset's, its changes are cleared, and
/// newcomers get that default too; the rules go to patchbay in one batch.
async fn preset(
    State(backend): State<Arc<Backend>>,
    Json(req): Json<PresetRequest>,
) -> Result<StatusCode, Failure> {
    let _wiring = backend.wiring.lock().await;
    let session = backend.session().await?;
    let before: (Preset, Vec<(String, Policy)>) = {
        let mut board = backend.board.lock().await;
        let before = (
            board.newcomers,
            board
                .members
                .iter()
                .map(|(id, m)| (id.clone(), m.policy.clone()))
                .collect(),
        );
        board.newcomers = req.preset;
        for m in board.members.values_mut() {
            m.policy = Policy {
                default: req.preset,
                changes: BTreeMap::new(),
            };
        }
        before
    };
    if let Err(e) = backend.rewire_all(&session).await {
        let mut board = backend.board.lock().await;
        board.newcomers = before.0;
        for (id, policy) in before.1 {
            if let Some(m) = board.members.get_mut(&id) {
                m.policy = policy;
            }
        }
        return Err(e);
    }
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
/// aliases). It becomes one change in the listener's policy, whose default stays (a listener
/// hearing everyone keeps hearing later joiners); the listener's compiled rule is sent through
/// the batch endpoint.
async fn wire(
    State(backend): State<Arc<Backend>>,
    Json(req): Json<WireRequest>,
) -> Result<StatusCode, Failure> {
    let _wiring = backend.wiring.lock().await;
    let session = backend.session().await?;
    let (previous, rule) = {
        let mut board = backend.board.lock().await;
        let not_here = |what: &str| {
            (
                StatusCode::NOT_FOUND,
                format!("{what}: not a participant of this switchboard"),
            )
        };
        let listener = board
            .members
            .get(&req.listener)
            .ok_or_else(|| not_here("listener"))?;
        let speaker = board
            .members
            .get(&req.speaker)
            .ok_or_else(|| not_here("speaker"))?;
        if req.listener == req.speaker {
            return Err((
                StatusCode::BAD_REQUEST,
                "a participant never hears itself".into(),
            ));
        }
        let by_default = Board::by_default(listener, speaker);
        let current = board
            .hearing(&req.listener, &req.speaker)
            .unwrap_or(Hearing::Nothing);
        let hearing = match (&req.alias, req.on) {
            (None, true) => Hearing::All,
            (None, false) => Hearing::Nothing,
            (Some(alias), on) => {
                let mut aliases: BTreeSet<String> = match current {
                    // "all of its streams": the aliases it publishes now
                    Hearing::All => speaker.streams.values().flatten().cloned().collect(),
                    Hearing::Aliases(a) => a,
                    Hearing::Nothing => BTreeSet::new(),
                };
                if on {
                    aliases.insert(alias.clone());
                } else {
                    aliases.remove(alias);
                }
                if aliases.is_empty() {
                    Hearing::Nothing
                } else {
                    Hearing::Aliases(aliases)
                }
            }
        };
        let Some(m) = board.members.get_mut(&req.listener) else {
            return Err(not_here("listener"));
        };
        let previous = if hearing == by_default {
            m.policy.changes.remove(&req.speaker)
        } else {
            m.policy.changes.insert(req.speaker.clone(), hearing)
        };
        let rule = board
            .compile(&session, &req.listener)
            .unwrap_or_else(|| json!({}));
        (previous, rule)
    };
    let sent = backend
        .rewire(&session, BTreeMap::from([(req.listener.clone(), rule)]))
        .await;
    if let Err(e) = sent {
        let mut board = backend.board.lock().await;
        if let Some(m) = board.members.get_mut(&req.listener) {
            match previous {
                Some(p) => m.policy.changes.insert(req.speaker, p),
                None => m.policy.changes.remove(&req.speaker),
            };
        }
        return Err(e);
    }
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
        wiring: Mutex::new(()),
    });
    let pages = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/switchboard");
    let app = Router::new()
        .route("/api/join", post(join))
        .route("/api/phone", post(phone))
        .route("/api/leave", post(leave))
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
