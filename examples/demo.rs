//! A customer backend in 200 lines: serves `examples/demo/` and hands each browser a device
//! token for one shared room, using patchbay's REST API exactly as a Bandwidth customer would.
//! It remembers the name each participant joined with (the page shows names, not ids) and
//! deletes a participant when its page leaves or closes, so the room's 20 seats free up.
//!
//! ```sh
//! cargo run --release -- serve                        # terminal 1: prints the dev credentials
//! (cd examples/demo && npm ci && npm run build)       # once: bundles Bandwidth's browser SDK
//! cargo run --release --example demo -- --username U --password P   # terminal 2
//! # open http://127.0.0.1:3000 in two tabs and press Join in each
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, get_service, post};
use axum::{Json, Router};
use clap::Parser;
use serde_json::{json, Value};
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
    /// Where this demo backend serves the page.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

struct Backend {
    args: Args,
    http: reqwest::Client,
    room: Mutex<Option<String>>,
    /// The participants this backend made, by id, with the name each joined with.
    people: Mutex<HashMap<String, String>>,
}

impl Backend {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
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
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The shared room, created on first use.
    async fn room(&self) -> Result<String, String> {
        let mut room = self.room.lock().await;
        if let Some(id) = room.as_ref() {
            return Ok(id.clone());
        }
        let session = self
            .call(
                reqwest::Method::POST,
                "/sessions",
                Some(json!({"tag": "demo"})),
            )
            .await?;
        let id = session["id"].as_str().ok_or("no session id")?.to_owned();
        *room = Some(id.clone());
        Ok(id)
    }
}

/// Creates a participant with these permissions and adds it to the room, subscribed to
/// everyone in it (later joiners included). Returns the participant's id and device token.
async fn enter_room(
    backend: &Backend,
    tag: &str,
    permissions: Value,
) -> Result<(String, Value), (StatusCode, String)> {
    let fail = |e: String| (StatusCode::BAD_GATEWAY, e);
    let room = backend.room().await.map_err(fail)?;
    let created = backend
        .call(
            reqwest::Method::POST,
            "/participants",
            Some(json!({"tag": tag, "publishPermissions": permissions})),
        )
        .await
        .map_err(fail)?;
    let participant = created["participant"]["id"]
        .as_str()
        .ok_or_else(|| fail("no participant id".into()))?
        .to_owned();
    backend
        .call(
            reqwest::Method::PUT,
            &format!("/sessions/{room}/participants/{participant}"),
            Some(json!({"sessionId": room})),
        )
        .await
        .map_err(fail)?;
    backend
        .people
        .lock()
        .await
        .insert(participant.clone(), tag.to_owned());
    Ok((participant, created["token"].clone()))
}

async fn join(
    State(backend): State<Arc<Backend>>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let tag: String = body["name"]
        .as_str()
        .unwrap_or("guest")
        .chars()
        .take(50)
        .collect();
    let (participant, token) = enter_room(&backend, &tag, json!(["AUDIO", "VIDEO"])).await?;
    let websocket_url = backend.args.patchbay.replacen("http", "ws", 1);
    Ok(Json(
        json!({"token": token, "websocketUrl": websocket_url, "participantId": participant}),
    ))
}

/// A page leaves (its Leave button, or the tab closing: `navigator.sendBeacon`, whose body
/// is JSON sent as text): its participant is deleted. Only participants this backend made.
async fn leave(State(backend): State<Arc<Backend>>, body: String) -> StatusCode {
    let Some(participant) = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["participantId"].as_str().map(str::to_owned))
    else {
        return StatusCode::BAD_REQUEST;
    };
    if backend.people.lock().await.remove(&participant).is_none() {
        return StatusCode::NOT_FOUND;
    }
    match backend
        .call(
            reqwest::Method::DELETE,
            &format!("/participants/{participant}"),
            None,
        )
        .await
    {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(e) => {
            eprintln!("demo: cannot delete participant {participant}: {e}");
            StatusCode::BAD_GATEWAY
        }
    }
}

/// The names participants joined with, by participant id (for the pages' labels).
async fn names(State(backend): State<Arc<Backend>>) -> Json<HashMap<String, String>> {
    Json(backend.people.lock().await.clone())
}

/// A phone's way in: an audio-only participant in the room; dial patchbay's SIP address with
/// the token in `User-To-User` (see examples/dial-in.md).
async fn phone(State(backend): State<Arc<Backend>>) -> Result<Json<Value>, (StatusCode, String)> {
    let (participant, token) = enter_room(&backend, "phone", json!(["AUDIO"])).await?;
    let jwt = token.as_str().unwrap_or_default();
    Ok(Json(json!({
        "participantId": participant,
        "token": token,
        "userToUser": format!("{jwt};encoding=jwt"),
    })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo");
    let backend = Arc::new(Backend {
        args: args.clone(),
        http: reqwest::Client::new(),
        room: Mutex::new(None),
        people: Mutex::new(HashMap::new()),
    });
    let app = Router::new()
        .route("/join", post(join))
        .route("/phone", post(phone))
        .route("/leave", post(leave))
        .route("/names", get(names))
        .fallback_service(get_service(tower_http::services::ServeDir::new(page)))
        .with_state(backend);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("demo: open http://{} in two tabs", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
