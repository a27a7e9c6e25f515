//! REST API tests through a real port: the server runs in-process (`App::build` on
//! 127.0.0.1:0, `run_until_stopped` on the test's runtime) and is driven with `reqwest` over
//! plain HTTP, as Bandwidth's SDKs would drive it.
//!
//! What is checked (reference §1 and §10): every Bandwidth operation under `/v1/accounts/…`
//! and `/accounts/…` with exact response shapes; input leniency and validation (optional
//! bodies, field-naming 400s, 413, 404, 405, 401); membership, the 20-member cap (also under a
//! 50-way race, on SQLite and PostgreSQL), subscriptions; patchbay's `routes`, whole-session
//! re-wire, OpenAPI document and health endpoints; the device token's shape.
//!
//! Every test uses a fresh SQLite file, except the PostgreSQL ones, which share this process's
//! PostgreSQL database and isolate by (random) account id. Run with `cargo test --test api`.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use patchbay_testkit::db as common;

mod input;

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use patchbay::domain::AccountId;
use patchbay_testkit::app::{spawn_app, RunningApp};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

// ------------------------------------------------------------------------------------------------
// Harness
// ------------------------------------------------------------------------------------------------

/// A running server on a real port, and the HTTP client that drives it.
struct Server {
    app: RunningApp,
    http: Client,
}

/// API credentials of one account.
#[derive(Debug, Clone)]
struct Account {
    id: String,
    user: String,
    pass: String,
}

impl Server {
    async fn start(database_url: &str) -> Server {
        Server {
            app: spawn_app(database_url).await,
            http: Client::new(),
        }
    }

    async fn sqlite() -> Server {
        Server::start(&common::sqlite_url()).await
    }

    async fn account(&self, id: &str) -> Account {
        let creds = self
            .app
            .control
            .create_account(AccountId::parse(id).expect("account id"))
            .await
            .expect("create account");
        Account {
            id: id.to_owned(),
            user: creds.username,
            pass: creds.password,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.app.http, path)
    }

    /// A client for `account`'s API under `prefix` (`"/v1"` or `""`).
    fn api(&self, account: &Account, prefix: &'static str) -> Api<'_> {
        Api {
            server: self,
            account: account.clone(),
            prefix,
        }
    }

    /// Sends a request to an absolute path with optional credentials.
    async fn send(&self, method: Method, path: &str, auth: Auth<'_>, body: Body) -> Resp {
        let mut rb = self.http.request(method.clone(), self.url(path));
        match auth {
            Auth::None => {}
            Auth::Basic(user, pass) => rb = rb.basic_auth(user, Some(pass)),
            Auth::Header(h) => rb = rb.header("authorization", h),
        }
        let shown_body;
        match body {
            Body::None => shown_body = "<none>".to_owned(),
            Body::Raw(bytes) => {
                shown_body = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                rb = rb
                    .header("content-type", "application/json; charset=utf-8")
                    .body(bytes);
            }
            Body::Json(v) => {
                shown_body = v.to_string();
                rb = rb
                    .header("content-type", "application/json; charset=utf-8")
                    .body(v.to_string());
            }
        }
        let res = rb
            .header("accept", "application/json")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
        let status = res.status();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let raw = res.text().await.expect("response body");
        let json = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap_or(Value::Null)
        };
        Resp {
            what: format!("{method} {path} (body {shown_body})"),
            status,
            content_type,
            raw,
            json,
        }
    }

    /// Stops the server and checks that it drained cleanly.
    async fn stop(self) {
        drop(self.http);
        self.app.stop().await.expect("server stopped with an error");
    }
}

enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Header(&'a str),
}

/// A request body.
#[derive(Clone)]
enum Body {
    /// No body and no content type.
    None,
    /// These bytes, as `application/json; charset=utf-8` (may be empty, like the Python SDK).
    Raw(Vec<u8>),
    /// This JSON value.
    Json(Value),
}

fn raw(s: &str) -> Body {
    Body::Raw(s.as_bytes().to_vec())
}

/// The four spellings of "no body".
fn no_bodies() -> Vec<(&'static str, Body)> {
    vec![
        ("no body", Body::None),
        ("empty body", raw("")),
        ("null", raw("null")),
        ("{}", raw("{}")),
    ]
}

#[derive(Debug)]
struct Resp {
    what: String,
    status: StatusCode,
    content_type: Option<String>,
    raw: String,
    json: Value,
}

impl Resp {
    fn is_json(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json"))
    }

    /// Asserts `status` and a JSON body; returns the body.
    #[track_caller]
    fn ok(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "{}: body {}", self.what, self.raw);
        assert!(
            self.is_json(),
            "{}: content type {:?}, body {:?}",
            self.what,
            self.content_type,
            self.raw
        );
        assert_ne!(self.json, Value::Null, "{}: body {:?}", self.what, self.raw);
        &self.json
    }

    #[track_caller]
    fn ok200(&self) -> &Value {
        self.ok(StatusCode::OK)
    }

    /// Asserts 204 with an empty body.
    #[track_caller]
    fn no_content(&self) {
        assert_eq!(
            self.status,
            StatusCode::NO_CONTENT,
            "{}: body {}",
            self.what,
            self.raw
        );
        assert_eq!(self.raw, "", "{}: 204 with a body", self.what);
    }

    /// Asserts an error body `{"error": "...", "requestId": "<uuid>"}` with `status`, whose
    /// message contains every one of `needles`. Returns the message.
    #[track_caller]
    fn error(&self, status: StatusCode, needles: &[&str]) -> String {
        assert_eq!(self.status, status, "{}: body {}", self.what, self.raw);
        assert!(
            self.is_json(),
            "{}: error without a JSON content type ({:?}): {:?}",
            self.what,
            self.content_type,
            self.raw
        );
        let obj = self.json.as_object().unwrap_or_else(|| {
            panic!("{}: error body is not an object: {:?}", self.what, self.raw)
        });
        let keys: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["error", "requestId"]),
            "{}: error body {}",
            self.what,
            self.raw
        );
        let message = obj["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: `error` is not a string: {}", self.what, self.raw));
        assert!(!message.is_empty(), "{}: empty error message", self.what);
        let request_id = obj["requestId"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: `requestId` is not a string: {}", self.what, self.raw));
        assert!(
            uuid::Uuid::parse_str(request_id).is_ok(),
            "{}: requestId {request_id:?} is not a UUID",
            self.what
        );
        for needle in needles {
            assert!(
                message.contains(needle),
                "{}: error message {message:?} does not mention {needle:?}",
                self.what
            );
        }
        message.to_owned()
    }

    #[track_caller]
    fn bad_request(&self, needles: &[&str]) -> String {
        self.error(StatusCode::BAD_REQUEST, needles)
    }

    #[track_caller]
    fn not_found(&self) -> String {
        self.error(StatusCode::NOT_FOUND, &[])
    }

    #[track_caller]
    fn conflict(&self, needles: &[&str]) -> String {
        self.error(StatusCode::CONFLICT, needles)
    }

    /// Asserts 401 with exactly `{"message":"Unauthorized"}`.
    #[track_caller]
    fn unauthorized(&self) {
        assert_eq!(
            self.status,
            StatusCode::UNAUTHORIZED,
            "{}: body {}",
            self.what,
            self.raw
        );
        assert!(
            self.is_json(),
            "{}: 401 content type {:?}",
            self.what,
            self.content_type
        );
        assert_eq!(
            self.json,
            json!({"message": "Unauthorized"}),
            "{}",
            self.what
        );
    }
}

/// One account's API under one prefix.
struct Api<'a> {
    server: &'a Server,
    account: Account,
    prefix: &'static str,
}

impl Api<'_> {
    /// The absolute path of `rest` (relative to `{prefix}/accounts/{accountId}`).
    fn path(&self, rest: &str) -> String {
        format!("{}/accounts/{}{}", self.prefix, self.account.id, rest)
    }

    async fn call(&self, method: Method, rest: &str, body: Body) -> Resp {
        self.server
            .send(
                method,
                &self.path(rest),
                Auth::Basic(&self.account.user, &self.account.pass),
                body,
            )
            .await
    }

    async fn get(&self, rest: &str) -> Resp {
        self.call(Method::GET, rest, Body::None).await
    }

    async fn delete(&self, rest: &str) -> Resp {
        self.call(Method::DELETE, rest, Body::None).await
    }

    async fn post(&self, rest: &str, body: Body) -> Resp {
        self.call(Method::POST, rest, body).await
    }

    async fn put(&self, rest: &str, body: Body) -> Resp {
        self.call(Method::PUT, rest, body).await
    }

    /// Creates a participant; returns (participant, token).
    async fn create_participant_with(&self, body: Body) -> (Value, String) {
        let r = self.post("/participants", body).await;
        let v = r.ok200().clone();
        let token = v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no token: {}", r.what, r.raw))
            .to_owned();
        (v["participant"].clone(), token)
    }

    /// Creates a default participant; returns its id.
    async fn participant(&self) -> String {
        id_of(&self.create_participant_with(Body::None).await.0)
    }

    /// Creates a session; returns its id.
    async fn session(&self) -> String {
        id_of(self.post("/sessions", Body::None).await.ok200())
    }

    async fn add(&self, s: &str, p: &str, body: Body) -> Resp {
        self.put(&format!("/sessions/{s}/participants/{p}"), body)
            .await
    }

    async fn remove(&self, s: &str, p: &str) -> Resp {
        self.delete(&format!("/sessions/{s}/participants/{p}"))
            .await
    }

    async fn subs(&self, s: &str, p: &str) -> Resp {
        self.get(&format!("/sessions/{s}/participants/{p}/subscriptions"))
            .await
    }

    async fn set_subs(&self, s: &str, p: &str, body: Body) -> Resp {
        self.put(
            &format!("/sessions/{s}/participants/{p}/subscriptions"),
            body,
        )
        .await
    }

    async fn members(&self, s: &str) -> Resp {
        self.get(&format!("/sessions/{s}/participants")).await
    }

    /// Member ids of a session, as listed.
    async fn member_ids(&self, s: &str) -> BTreeSet<String> {
        let r = self.members(s).await;
        r.ok200()
            .as_array()
            .unwrap_or_else(|| panic!("{}: not an array: {}", r.what, r.raw))
            .iter()
            .map(id_of)
            .collect()
    }

    /// The `subscriptions` GET body of a member.
    async fn subs_of(&self, s: &str, p: &str) -> Value {
        self.subs(s, p).await.ok200().clone()
    }

    /// The participant object.
    async fn get_participant(&self, p: &str) -> Value {
        self.get(&format!("/participants/{p}"))
            .await
            .ok200()
            .clone()
    }

    /// `routes`: participantId -> (publisherId -> entry), and the subscriber order.
    async fn routes(&self, s: &str) -> (Vec<String>, BTreeMap<String, BTreeMap<String, Value>>) {
        let r = self.get(&format!("/sessions/{s}/routes")).await;
        let body = r.ok200();
        assert_eq!(body["sessionId"], json!(s), "{}: {}", r.what, r.raw);
        let mut order = Vec::new();
        let mut map = BTreeMap::new();
        for sub in body["subscribers"].as_array().expect("subscribers array") {
            let id = sub["participantId"]
                .as_str()
                .expect("participantId")
                .to_owned();
            let mut receives = BTreeMap::new();
            for entry in sub["receives"].as_array().expect("receives array") {
                let publisher = entry["publisherId"]
                    .as_str()
                    .expect("publisherId")
                    .to_owned();
                assert!(
                    receives.insert(publisher, entry.clone()).is_none(),
                    "{}: publisher listed twice for {id}: {}",
                    r.what,
                    r.raw
                );
            }
            order.push(id.clone());
            assert!(
                map.insert(id, receives).is_none(),
                "subscriber listed twice"
            );
        }
        (order, map)
    }

    /// A final valid request succeeds: the server still serves.
    async fn still_serving(&self) {
        let (p, _) = self
            .create_participant_with(raw(r#"{"tag":"still here"}"#))
            .await;
        assert_eq!(p["tag"], json!("still here"));
        let id = id_of(&p);
        assert_eq!(self.get_participant(&id).await, p);
    }
}

#[track_caller]
fn id_of(v: &Value) -> String {
    let id = v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_owned();
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "id {id:?} is not a UUID"
    );
    id
}

fn random_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// An account id unique in a shared database (at most 12 characters).
fn unique_account(prefix: &str) -> String {
    let id = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
    id[..12].to_owned()
}

fn subs_participants(ids: &[&str]) -> Value {
    json!({"participants": ids.iter().map(|p| json!({"participantId": p})).collect::<Vec<_>>()})
}

const PREFIXES: [&str; 2] = ["/v1", ""];

// ------------------------------------------------------------------------------------------------
// The 11 Bandwidth operations, under both prefixes
// ------------------------------------------------------------------------------------------------

/// Exercises all 11 operations with exact response shapes.
async fn all_operations(api: &Api<'_>) {
    // 1. createParticipant with every field.
    let r = api
        .post(
            "/participants",
            Body::Json(json!({
                "callbackUrl": "https://example.com/callback",
                "publishPermissions": ["AUDIO"],
                "tag": "caller",
                "deviceApiVersion": "V3",
            })),
        )
        .await;
    let created = r.ok200().clone();
    let keys: BTreeSet<&str> = created
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, BTreeSet::from(["participant", "token"]), "{}", r.raw);
    assert!(created["token"].as_str().is_some_and(|t| !t.is_empty()));
    let p1 = id_of(&created["participant"]);
    let p1_view = json!({
        "id": p1,
        "callbackUrl": "https://example.com/callback",
        "publishPermissions": ["AUDIO"],
        "sessions": [],
        "subscriptions": {},
        "tag": "caller",
        "deviceApiVersion": "V3",
    });
    assert_eq!(created["participant"], p1_view);

    // createParticipant with no body: defaults; absent optional fields are omitted, not null.
    let r = api.post("/participants", Body::None).await;
    let created2 = r.ok200().clone();
    let p2 = id_of(&created2["participant"]);
    assert_ne!(p1, p2, "every create returns a new id");
    let p2_view = json!({
        "id": p2,
        "publishPermissions": ["AUDIO", "VIDEO"],
        "sessions": [],
        "subscriptions": {},
        "deviceApiVersion": "V3",
    });
    assert_eq!(created2["participant"], p2_view);

    // 2. getParticipant: the same shape, no token.
    assert_eq!(api.get_participant(&p1).await, p1_view);
    assert_eq!(api.get_participant(&p2).await, p2_view);

    // 4. createSession, with and without a tag.
    let r = api
        .post("/sessions", Body::Json(json!({"tag": "room"})))
        .await;
    let session = r.ok200().clone();
    let s = id_of(&session);
    assert_eq!(session, json!({"id": s, "tag": "room"}));
    let r = api.post("/sessions", Body::None).await;
    let untagged = r.ok200().clone();
    let s2 = id_of(&untagged);
    assert_eq!(untagged, json!({"id": s2}));

    // 5. getSession.
    assert_eq!(api.get(&format!("/sessions/{s}")).await.ok200(), &session);
    assert_eq!(api.get(&format!("/sessions/{s2}")).await.ok200(), &untagged);

    // 7. listSessionParticipants of an empty session: 200 [] (never 204).
    assert_eq!(api.members(&s).await.ok200(), &json!([]));

    // 10. getParticipantSubscriptions... first 8. addParticipantToSession.
    api.add(&s, &p1, Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    api.add(&s, &p2, Body::None).await.no_content();

    let r = api.members(&s).await;
    let listed: BTreeMap<String, Value> = r
        .ok200()
        .as_array()
        .unwrap_or_else(|| panic!("{}: {}", r.what, r.raw))
        .iter()
        .map(|p| (id_of(p), p.clone()))
        .collect();
    let mut p1_member = p1_view.clone();
    p1_member["sessions"] = json!([s]);
    p1_member["subscriptions"] = json!({"sessionId": s});
    let mut p2_member = p2_view.clone();
    p2_member["sessions"] = json!([s]);
    assert_eq!(
        listed,
        BTreeMap::from([
            (p1.clone(), p1_member.clone()),
            (p2.clone(), p2_member.clone())
        ])
    );
    assert_eq!(api.get_participant(&p1).await, p1_member);

    // 10. getParticipantSubscriptions: 200 JSON, {} when there are none (never 204).
    assert_eq!(api.subs_of(&s, &p1).await, json!({"sessionId": s}));
    assert_eq!(api.subs_of(&s, &p2).await, json!({}));

    // 11. updateParticipantSubscriptions.
    let rules = json!({"participants": [{"participantId": p1, "streamAliases": ["cam"]}]});
    api.set_subs(&s, &p2, Body::Json(rules.clone()))
        .await
        .no_content();
    assert_eq!(api.subs_of(&s, &p2).await, rules);
    p2_member["subscriptions"] = rules;
    assert_eq!(api.get_participant(&p2).await, p2_member);

    // 9. removeParticipantFromSession.
    api.remove(&s, &p2).await.no_content();
    assert_eq!(api.member_ids(&s).await, BTreeSet::from([p1.clone()]));
    assert_eq!(api.get_participant(&p2).await, p2_view);

    // 3. deleteParticipant.
    api.delete(&format!("/participants/{p2}"))
        .await
        .no_content();
    api.get(&format!("/participants/{p2}")).await.not_found();

    // 6. deleteSession.
    api.delete(&format!("/sessions/{s}")).await.no_content();
    api.get(&format!("/sessions/{s}")).await.not_found();
    assert_eq!(api.get_participant(&p1).await, p1_view);
    api.delete(&format!("/sessions/{s2}")).await.no_content();
    api.delete(&format!("/participants/{p1}"))
        .await
        .no_content();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_operations_under_v1() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    all_operations(&server.api(&acct, "/v1")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_operations_without_v1_prefix() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    all_operations(&server.api(&acct, "")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_prefixes_address_the_same_resources() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let v1 = server.api(&acct, "/v1");
    let bare = server.api(&acct, "");
    let p = v1.participant().await;
    let s = bare.session().await;
    v1.add(&s, &p, Body::None).await.no_content();
    assert_eq!(bare.member_ids(&s).await, BTreeSet::from([p.clone()]));
    assert_eq!(bare.get_participant(&p).await["sessions"], json!([s]));
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// createParticipant / createSession fields
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_api_version_is_lenient_and_echoed_upper_case() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    for (given, echoed) in [("v3", "V3"), ("V3", "V3"), ("V2", "V2"), ("v2", "V2")] {
        let (p, token) = api
            .create_participant_with(Body::Json(json!({"deviceApiVersion": given})))
            .await;
        assert_eq!(p["deviceApiVersion"], json!(echoed), "given {given}");
        assert_eq!(
            api.get_participant(&id_of(&p)).await["deviceApiVersion"],
            json!(echoed)
        );
        // Tokens are always v3, whatever the participant was created with.
        assert_eq!(token_payload(&token)["v"], json!("v3"), "given {given}");
    }
    let (p, _) = api.create_participant_with(Body::None).await;
    assert_eq!(p["deviceApiVersion"], json!("V3"), "default");
    for bad in ["V4", "v1", "", "3"] {
        api.post(
            "/participants",
            Body::Json(json!({"deviceApiVersion": bad})),
        )
        .await
        .bad_request(&["deviceApiVersion"]);
    }
    api.post("/participants", Body::Json(json!({"deviceApiVersion": 3})))
        .await
        .bad_request(&["deviceApiVersion"]);
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_permissions_default_and_validation() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let (p, _) = api
        .create_participant_with(Body::Json(json!({"tag": "x"})))
        .await;
    assert_eq!(p["publishPermissions"], json!(["AUDIO", "VIDEO"]));
    for perms in [
        json!(["AUDIO"]),
        json!(["VIDEO"]),
        json!(["AUDIO", "VIDEO"]),
    ] {
        let (p, _) = api
            .create_participant_with(Body::Json(json!({"publishPermissions": perms})))
            .await;
        assert_eq!(p["publishPermissions"], perms);
        assert_eq!(
            api.get_participant(&id_of(&p)).await["publishPermissions"],
            perms
        );
    }
    // Unknown enum values (enum values are exact: "AUDIO", not "audio").
    for bad in [json!(["AUDIO", "SMELL"]), json!(["audio"]), json!([1])] {
        api.post(
            "/participants",
            Body::Json(json!({"publishPermissions": bad})),
        )
        .await
        .bad_request(&["publishPermissions"]);
    }
    // Wrong type.
    api.post("/participants", raw(r#"{"publishPermissions":"AUDIO"}"#))
        .await
        .bad_request(&["publishPermissions"]);
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_are_at_most_50_characters() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let fifty = "t".repeat(50);
    let fifty_one = "t".repeat(51);
    let fifty_wide = "é".repeat(50); // 100 bytes, 50 characters
    for tag in [&fifty, &fifty_wide] {
        let (p, _) = api
            .create_participant_with(Body::Json(json!({"tag": tag})))
            .await;
        assert_eq!(p["tag"], json!(tag));
        assert_eq!(api.get_participant(&id_of(&p)).await["tag"], json!(tag));
        let r = api.post("/sessions", Body::Json(json!({"tag": tag}))).await;
        let s = r.ok200().clone();
        assert_eq!(s["tag"], json!(tag));
        assert_eq!(
            api.get(&format!("/sessions/{}", id_of(&s))).await.ok200(),
            &s
        );
    }
    api.post("/participants", Body::Json(json!({"tag": fifty_one})))
        .await
        .bad_request(&["tag"]);
    api.post("/sessions", Body::Json(json!({"tag": fifty_one})))
        .await
        .bad_request(&["tag"]);
    api.post("/participants", raw(r#"{"tag":5}"#))
        .await
        .bad_request(&["tag"]);
    api.post("/sessions", raw(r#"{"tag":["a"]}"#))
        .await
        .bad_request(&["tag"]);
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callback_url_validation() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    for url in [
        "https://example.com/callback",
        "http://93.184.215.14:8080/hooks/webrtc?x=1",
    ] {
        let (p, _) = api
            .create_participant_with(Body::Json(json!({"callbackUrl": url})))
            .await;
        assert_eq!(p["callbackUrl"], json!(url));
        assert_eq!(
            api.get_participant(&id_of(&p)).await["callbackUrl"],
            json!(url)
        );
    }
    // `null` is the same as absent.
    let (p, _) = api
        .create_participant_with(Body::Json(json!({"callbackUrl": null})))
        .await;
    assert!(p.get("callbackUrl").is_none_or(Value::is_null), "{p}");
    for bad in [
        "not a url",
        "ftp://example.com/x",
        "/relative/path",
        "example.com/cb",
        "",
    ] {
        api.post("/participants", Body::Json(json!({"callbackUrl": bad})))
            .await
            .bad_request(&["callbackUrl"]);
    }
    api.post("/participants", raw(r#"{"callbackUrl":42}"#))
        .await
        .bad_request(&["callbackUrl"]);
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_token_shape() {
    let server = Server::sqlite().await;
    // The longest account id (12 characters) gives the longest token.
    let acct = server.account("acct_long-12").await;
    let api = server.api(&acct, "/v1");
    for body in [
        Body::None,
        Body::Json(json!({"deviceApiVersion": "V2", "tag": "t".repeat(50)})),
    ] {
        let (p, token) = api.create_participant_with(body).await;
        assert!(
            token.len() <= 186,
            "token is {} characters: {token}",
            token.len()
        );
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "not a three-part JWT: {token}");
        for part in &parts {
            assert!(
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "part {part:?} is not base64url without padding"
            );
        }
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[0])
                .expect("header base64url"),
        )
        .expect("header JSON");
        assert_eq!(header["alg"], json!("HS256"), "header {header}");
        let payload = token_payload(&token);
        assert_eq!(payload["a"], json!(acct.id), "payload {payload}");
        assert_eq!(payload["p"], json!(id_of(&p)), "payload {payload}");
        assert_eq!(payload["v"], json!("v3"), "payload {payload}");
        let exp = payload["exp"]
            .as_u64()
            .unwrap_or_else(|| panic!("exp in {payload}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(exp > now, "token already expired: exp {exp}, now {now}");
    }
    server.stop().await;
}

fn token_payload(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("payload part");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}

// ------------------------------------------------------------------------------------------------
// Bodies
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn optional_bodies_mean_no_body() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let other = api.participant().await;
    api.add(&s, &other, Body::None).await.no_content();
    for (name, body) in no_bodies() {
        // createParticipant: defaults.
        let (p, _) = api.create_participant_with(body.clone()).await;
        let id = id_of(&p);
        assert_eq!(
            p,
            json!({"id": id, "publishPermissions": ["AUDIO", "VIDEO"], "sessions": [],
                   "subscriptions": {}, "deviceApiVersion": "V3"}),
            "{name}"
        );
        // createSession: no tag.
        let r = api.post("/sessions", body.clone()).await;
        let session = r.ok200().clone();
        assert_eq!(session, json!({"id": id_of(&session)}), "{name}");
        // addParticipantToSession: membership only, no subscriptions.
        api.add(&s, &id, body.clone()).await.no_content();
        assert_eq!(api.subs_of(&s, &id).await, json!({}), "{name}");
        let got = api.get_participant(&id).await;
        assert_eq!(got["sessions"], json!([s]), "{name}");
        assert_eq!(got["subscriptions"], json!({}), "{name}");
        // updateParticipantSubscriptions: clears.
        api.set_subs(&s, &id, Body::Json(json!({"sessionId": s})))
            .await
            .no_content();
        assert_eq!(
            api.subs_of(&s, &id).await,
            json!({"sessionId": s}),
            "{name}"
        );
        api.set_subs(&s, &id, body.clone()).await.no_content();
        assert_eq!(api.subs_of(&s, &id).await, json!({}), "{name}");
        assert_eq!(
            api.get_participant(&id).await["subscriptions"],
            json!({}),
            "{name}"
        );
        // Whitespace around is as good as nothing.
        api.set_subs(&s, &id, raw(" \n ")).await.no_content();
    }
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_mistyped_bodies_are_400_naming_the_field() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    let q = api.participant().await;
    api.add(&s, &q, Body::None).await.no_content();
    let add = format!("/sessions/{s}/participants/{p}");
    let subs = format!("/sessions/{s}/participants/{q}/subscriptions");

    // Malformed JSON on every endpoint that takes a body.
    for (method, path) in [
        (Method::POST, "/participants".to_owned()),
        (Method::POST, "/sessions".to_owned()),
        (Method::PUT, add.clone()),
        (Method::PUT, subs.clone()),
        (Method::PUT, format!("/sessions/{s}/subscriptions")),
    ] {
        for garbage in [r#"{"tag":"#, "{tag: 1}", "nope", "{,}"] {
            api.call(method.clone(), &path, raw(garbage))
                .await
                .bad_request(&[]);
        }
        // Not UTF-8.
        api.call(
            method.clone(),
            &path,
            Body::Raw(vec![0xff, 0xfe, b'{', b'}']),
        )
        .await
        .bad_request(&[]);
    }
    // The wrong top-level type.
    api.post("/participants", raw("[]")).await.bad_request(&[]);
    api.post("/sessions", raw("\"room\""))
        .await
        .bad_request(&[]);
    api.put(&add, raw("[]")).await.bad_request(&[]);
    api.put(&subs, raw("5")).await.bad_request(&[]);

    // Wrong types name the field.
    let cases: Vec<(Method, &str, &str, &[&str])> = vec![
        (Method::POST, "/participants", r#"{"tag":5}"#, &["tag"]),
        (
            Method::POST,
            "/participants",
            r#"{"publishPermissions":"AUDIO"}"#,
            &["publishPermissions"],
        ),
        (
            Method::POST,
            "/participants",
            r#"{"deviceApiVersion":["V3"]}"#,
            &["deviceApiVersion"],
        ),
        (Method::POST, "/sessions", r#"{"tag":{}}"#, &["tag"]),
        (
            Method::PUT,
            &add,
            r#"{"participants":[{"streamAliases":["x"]}]}"#,
            &["participantId"],
        ),
        (
            Method::PUT,
            &subs,
            r#"{"participants":[{"streamAliases":["x"]}]}"#,
            &["participantId"],
        ),
        (
            Method::PUT,
            &subs,
            r#"{"participants":{"participantId":"x"}}"#,
            &["participants"],
        ),
        (Method::PUT, &subs, r#"{"sessionId":7}"#, &["sessionId"]),
        (
            Method::PUT,
            &add,
            r#"{"participants":[{"participantId":5}]}"#,
            &["participantId"],
        ),
        (
            Method::PUT,
            &subs,
            r#"{"participants":[{"participantId":"not-a-uuid"}]}"#,
            &["participantId"],
        ),
        (
            Method::PUT,
            &subs,
            r#"{"sessionId":"not-a-uuid"}"#,
            &["sessionId"],
        ),
        (
            Method::PUT,
            &subs,
            r#"{"participants":[{"participantId":"PID","streamAliases":"cam"}]}"#,
            &["streamAliases"],
        ),
    ];
    for (method, path, body, needles) in cases {
        let body = body.replace("PID", &p);
        api.call(method, path, raw(&body))
            .await
            .bad_request(needles);
    }

    // Nothing changed.
    assert_eq!(api.member_ids(&s).await, BTreeSet::from([q.clone()]));
    assert_eq!(api.subs_of(&s, &q).await, json!({}));
    assert_eq!(api.get_participant(&p).await["sessions"], json!([]));
    api.still_serving().await;
    server.stop().await;
}

/// A JSON document followed by more text is malformed JSON, not that document.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trailing_characters_after_the_json_body_are_400() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    let q = api.participant().await;
    api.add(&s, &q, Body::None).await.no_content();
    for garbage in [
        r#"{"tag":"a"} trailing"#,
        r#"{"tag":"a"}}"#,
        r#"{} {}"#,
        "null x",
    ] {
        api.post("/participants", raw(garbage))
            .await
            .bad_request(&[]);
        api.post("/sessions", raw(garbage)).await.bad_request(&[]);
        api.add(&s, &p, raw(garbage)).await.bad_request(&[]);
        api.set_subs(&s, &q, raw(garbage)).await.bad_request(&[]);
        api.put(&format!("/sessions/{s}/subscriptions"), raw(garbage))
            .await
            .bad_request(&[]);
    }
    assert_eq!(api.member_ids(&s).await, BTreeSet::from([q]));
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_bodies_are_413() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    const LIMIT: usize = 64 * 1024;
    // Exactly at the limit: accepted.
    let mut at_limit = br#"{"tag":"edge"}"#.to_vec();
    at_limit.resize(LIMIT, b' ');
    let (p, _) = api.create_participant_with(Body::Raw(at_limit)).await;
    assert_eq!(p["tag"], json!("edge"));
    // One byte over, and far over: 413 with a JSON error body.
    let mut over = br#"{"tag":"edge"}"#.to_vec();
    over.resize(LIMIT + 1, b' ');
    api.post("/participants", Body::Raw(over.clone()))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    let big = format!(r#"{{"tag":"{}"}}"#, "x".repeat(1024 * 1024));
    api.post("/participants", raw(&big))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    let s = api.session().await;
    let q = api.participant().await;
    api.add(&s, &q, Body::Raw(over.clone()))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    assert_eq!(api.get_participant(&q).await["sessions"], json!([]));
    api.add(&s, &q, Body::None).await.no_content();
    api.set_subs(&s, &q, Body::Raw(over.clone()))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    api.post("/sessions", Body::Raw(over))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, &[]);
    api.still_serving().await;
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Paths, routing, methods, authentication, tenancy
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn non_uuid_path_ids_are_400_naming_the_parameter() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    for prefix in PREFIXES {
        let api = server.api(&acct, prefix);
        let s = api.session().await;
        let p = api.participant().await;
        let cases: Vec<(Method, String, &str)> = vec![
            (
                Method::GET,
                "/participants/not-a-uuid".into(),
                "participantId",
            ),
            (Method::DELETE, "/participants/123".into(), "participantId"),
            (Method::GET, "/sessions/nope".into(), "sessionId"),
            (Method::DELETE, "/sessions/nope".into(), "sessionId"),
            (
                Method::GET,
                "/sessions/nope/participants".into(),
                "sessionId",
            ),
            (Method::GET, "/sessions/nope/routes".into(), "sessionId"),
            (
                Method::PUT,
                "/sessions/nope/subscriptions".into(),
                "sessionId",
            ),
            (
                Method::PUT,
                format!("/sessions/nope/participants/{p}"),
                "sessionId",
            ),
            (
                Method::PUT,
                format!("/sessions/{s}/participants/nope"),
                "participantId",
            ),
            (
                Method::DELETE,
                format!("/sessions/nope/participants/{p}"),
                "sessionId",
            ),
            (
                Method::DELETE,
                format!("/sessions/{s}/participants/nope"),
                "participantId",
            ),
            (
                Method::GET,
                format!("/sessions/nope/participants/{p}/subscriptions"),
                "sessionId",
            ),
            (
                Method::GET,
                format!("/sessions/{s}/participants/nope/subscriptions"),
                "participantId",
            ),
            (
                Method::PUT,
                format!("/sessions/nope/participants/{p}/subscriptions"),
                "sessionId",
            ),
            (
                Method::PUT,
                format!("/sessions/{s}/participants/nope/subscriptions"),
                "participantId",
            ),
        ];
        for (method, path, field) in cases {
            api.call(method, &path, Body::None)
                .await
                .bad_request(&[field]);
        }
        assert_eq!(api.get_participant(&p).await["sessions"], json!([]));
        api.still_serving().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_are_404_json() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    let a = &acct.id;
    let paths = [
        "/".to_owned(),
        "/nope".to_owned(),
        "/v1".to_owned(),
        "/v1/accounts".to_owned(),
        format!("/v1/accounts/{a}"),
        format!("/v1/accounts/{a}/widgets"),
        format!("/accounts/{a}/widgets"),
        format!("/v2/accounts/{a}/participants/{p}"),
        format!("/v1/accounts/{a}/sessions/{s}/participants/{p}/subscriptions/extra"),
        format!("/accounts/{a}/sessions/{s}/participants/{p}/extra"),
        format!("/v1/v1/accounts/{a}/sessions/{s}"),
    ];
    for path in &paths {
        for auth in [Auth::None, Auth::Basic(&acct.user, &acct.pass)] {
            server
                .send(Method::GET, path, auth, Body::None)
                .await
                .not_found();
        }
        server
            .send(
                Method::POST,
                path,
                Auth::Basic(&acct.user, &acct.pass),
                raw("{}"),
            )
            .await
            .not_found();
    }
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_methods_are_405_json() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    for prefix in PREFIXES {
        let api = server.api(&acct, prefix);
        let s = api.session().await;
        let p = api.participant().await;
        let cases: Vec<(Method, String)> = vec![
            (Method::GET, "/participants".into()),
            (Method::DELETE, "/participants".into()),
            (Method::PUT, "/participants".into()),
            (Method::POST, format!("/participants/{p}")),
            (Method::PATCH, format!("/participants/{p}")),
            (Method::PUT, format!("/participants/{p}")),
            (Method::GET, "/sessions".into()),
            (Method::POST, format!("/sessions/{s}")),
            (Method::PATCH, format!("/sessions/{s}")),
            (Method::POST, format!("/sessions/{s}/participants")),
            (Method::DELETE, format!("/sessions/{s}/participants")),
            (Method::GET, format!("/sessions/{s}/participants/{p}")),
            (Method::POST, format!("/sessions/{s}/participants/{p}")),
            (
                Method::POST,
                format!("/sessions/{s}/participants/{p}/subscriptions"),
            ),
            (
                Method::DELETE,
                format!("/sessions/{s}/participants/{p}/subscriptions"),
            ),
            (Method::GET, format!("/sessions/{s}/subscriptions")),
            (Method::POST, format!("/sessions/{s}/routes")),
        ];
        for (method, path) in cases {
            api.call(method, &path, Body::None)
                .await
                .error(StatusCode::METHOD_NOT_ALLOWED, &[]);
        }
        // Nothing was created or deleted by those.
        assert_eq!(api.get_participant(&p).await["sessions"], json!([]));
        api.get(&format!("/sessions/{s}")).await.ok200();
        api.still_serving().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_methods_on_operational_endpoints_are_405_json() {
    let server = Server::sqlite().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        server
            .send(Method::POST, path, Auth::None, Body::None)
            .await
            .error(StatusCode::METHOD_NOT_ALLOWED, &[]);
    }
    server.stop().await;
}

/// Every account endpoint (method, path relative to the account), for `s` and `p`.
fn account_endpoints(s: &str, p: &str) -> Vec<(Method, String, Body)> {
    vec![
        (Method::POST, "/participants".into(), Body::None),
        (Method::GET, format!("/participants/{p}"), Body::None),
        (Method::DELETE, format!("/participants/{p}"), Body::None),
        (Method::POST, "/sessions".into(), raw(r#"{"tag":"x"}"#)),
        (Method::GET, format!("/sessions/{s}"), Body::None),
        (Method::DELETE, format!("/sessions/{s}"), Body::None),
        (
            Method::GET,
            format!("/sessions/{s}/participants"),
            Body::None,
        ),
        (
            Method::PUT,
            format!("/sessions/{s}/participants/{p}"),
            Body::None,
        ),
        (
            Method::DELETE,
            format!("/sessions/{s}/participants/{p}"),
            Body::None,
        ),
        (
            Method::GET,
            format!("/sessions/{s}/participants/{p}/subscriptions"),
            Body::None,
        ),
        (
            Method::PUT,
            format!("/sessions/{s}/participants/{p}/subscriptions"),
            Body::None,
        ),
        (
            Method::PUT,
            format!("/sessions/{s}/subscriptions"),
            raw("{}"),
        ),
        (Method::GET, format!("/sessions/{s}/routes"), Body::None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_or_wrong_credentials_are_401() {
    let server = Server::sqlite().await;
    let a = server.account("acct").await;
    let b = server.account("other").await;
    let wrong_pass = format!("{}x", a.pass);
    let unknown_user = "nobody".to_owned();
    let colonless = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&a.user)
    );
    let bearer = format!("Bearer {}", a.pass);
    for prefix in PREFIXES {
        let api_a = server.api(&a, prefix);
        let api_b = server.api(&b, prefix);
        let s = api_b.session().await;
        let p = api_b.participant().await;
        api_b
            .add(&s, &p, Body::Json(json!({"sessionId": s})))
            .await
            .no_content();
        for (method, rest, body) in account_endpoints(&s, &p) {
            let b_path = api_b.path(&rest);
            let a_path = api_a.path(&rest);
            let attempts: Vec<(&str, Auth, &String)> = vec![
                ("no credentials", Auth::None, &b_path),
                ("wrong password", Auth::Basic(&b.user, &wrong_pass), &b_path),
                ("unknown user", Auth::Basic(&unknown_user, &b.pass), &b_path),
                (
                    "not base64",
                    Auth::Header("Basic !!!not-base64!!!"),
                    &b_path,
                ),
                ("no colon", Auth::Header(&colonless), &b_path),
                ("bearer scheme", Auth::Header(&bearer), &b_path),
                ("empty header", Auth::Header(""), &b_path),
                // Account A's valid credentials on account B's path.
                ("A on B", Auth::Basic(&a.user, &a.pass), &b_path),
                // Account B's valid credentials on account A's path.
                ("B on A", Auth::Basic(&b.user, &b.pass), &a_path),
            ];
            for (name, auth, path) in attempts {
                let r = server.send(method.clone(), path, auth, body.clone()).await;
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{name}: {}: {}",
                    r.what,
                    r.raw
                );
                r.unauthorized();
            }
        }
        // An account that does not exist at all.
        server
            .send(
                Method::POST,
                &format!("{prefix}/accounts/ghost/participants"),
                Auth::Basic(&a.user, &a.pass),
                Body::None,
            )
            .await
            .unauthorized();
        // Nothing was touched.
        assert_eq!(api_b.member_ids(&s).await, BTreeSet::from([p.clone()]));
        assert_eq!(api_b.subs_of(&s, &p).await, json!({"sessionId": s}));
        api_a.still_serving().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_accounts_resources_are_404_and_do_not_leak() {
    let server = Server::sqlite().await;
    let a = server.account("acct").await;
    let b = server.account("other").await;
    for prefix in PREFIXES {
        let api_a = server.api(&a, prefix);
        let api_b = server.api(&b, prefix);
        let sb = api_b.session().await;
        let pb = api_b.participant().await;
        api_b
            .add(&sb, &pb, Body::Json(json!({"sessionId": sb})))
            .await
            .no_content();
        let sa = api_a.session().await;
        let pa = api_a.participant().await;

        // B's ids on A's path (with A's credentials) look exactly like ids that don't exist.
        let ghost_s = random_uuid();
        let ghost_p = random_uuid();
        let theirs = account_endpoints(&sb, &pb);
        let nobodys = account_endpoints(&ghost_s, &ghost_p);
        for ((method, rest, body), (_, ghost_rest, _)) in theirs.into_iter().zip(nobodys) {
            if rest == "/participants" || rest == "/sessions" {
                continue; // creates: no id in the path
            }
            let r = api_a.call(method.clone(), &rest, body.clone()).await;
            let msg = r.not_found();
            let ghost = api_a.call(method, &ghost_rest, body).await;
            assert_eq!(msg, ghost.not_found(), "{} leaks existence", r.what);
        }
        // Mixed: A's session with B's participant, B's session with A's participant.
        let cases: Vec<(Method, String)> = vec![
            (Method::PUT, format!("/sessions/{sa}/participants/{pb}")),
            (Method::DELETE, format!("/sessions/{sa}/participants/{pb}")),
            (
                Method::GET,
                format!("/sessions/{sa}/participants/{pb}/subscriptions"),
            ),
            (
                Method::PUT,
                format!("/sessions/{sa}/participants/{pb}/subscriptions"),
            ),
            (Method::PUT, format!("/sessions/{sb}/participants/{pa}")),
            (
                Method::GET,
                format!("/sessions/{sb}/participants/{pa}/subscriptions"),
            ),
        ];
        for (method, rest) in cases {
            api_a.call(method, &rest, Body::None).await.not_found();
        }
        // A re-wire of A's session naming B's participant as a key.
        api_a
            .put(
                &format!("/sessions/{sa}/subscriptions"),
                Body::Json(json!({ pb.clone(): {"sessionId": sa} })),
            )
            .await
            .not_found();

        // B's things are intact.
        assert_eq!(api_b.member_ids(&sb).await, BTreeSet::from([pb.clone()]));
        assert_eq!(api_b.subs_of(&sb, &pb).await, json!({"sessionId": sb}));
        api_b.get(&format!("/sessions/{sb}")).await.ok200();
        assert_eq!(api_a.member_ids(&sa).await, BTreeSet::new());
        assert_eq!(api_a.get_participant(&pa).await["sessions"], json!([]));
    }
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Membership
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_belongs_to_one_session() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s1 = api.session().await;
    let s2 = api.session().await;
    let p = api.participant().await;
    let q = api.participant().await;
    api.add(&s1, &p, Body::Json(json!({"sessionId": s1})))
        .await
        .no_content();
    api.add(&s1, &q, Body::None).await.no_content();

    // A member of another session: 409, and nothing changes.
    api.add(&s2, &p, Body::None).await.conflict(&[]);
    api.add(&s2, &p, Body::Json(json!({"sessionId": s2})))
        .await
        .conflict(&[]);
    assert_eq!(api.member_ids(&s2).await, BTreeSet::new());
    let got = api.get_participant(&p).await;
    assert_eq!(got["sessions"], json!([s1]));
    assert_eq!(got["subscriptions"], json!({"sessionId": s1}));

    // Re-adding to its own session: 204; without a body its subscriptions are kept...
    for (name, body) in no_bodies() {
        api.add(&s1, &p, body).await.no_content();
        assert_eq!(
            api.subs_of(&s1, &p).await,
            json!({"sessionId": s1}),
            "{name}"
        );
    }
    // ...with a body they are replaced.
    let rules = subs_participants(&[&q]);
    api.add(&s1, &p, Body::Json(rules.clone()))
        .await
        .no_content();
    assert_eq!(api.subs_of(&s1, &p).await, rules);
    assert_eq!(
        api.member_ids(&s1).await,
        BTreeSet::from([p.clone(), q.clone()])
    );

    // The transfer pattern: remove, then add elsewhere.
    api.remove(&s1, &p).await.no_content();
    api.add(&s2, &p, Body::Json(json!({"sessionId": s2})))
        .await
        .no_content();
    let got = api.get_participant(&p).await;
    assert_eq!(got["sessions"], json!([s2]));
    assert_eq!(got["subscriptions"], json!({"sessionId": s2}));
    assert_eq!(api.member_ids(&s1).await, BTreeSet::from([q.clone()]));
    assert_eq!(api.member_ids(&s2).await, BTreeSet::from([p.clone()]));

    // Unknown session or participant: 404.
    api.add(&random_uuid(), &q, Body::None).await.not_found();
    api.add(&s2, &random_uuid(), Body::None).await.not_found();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_holds_at_most_20() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let mut members = Vec::new();
    for _ in 0..20 {
        let p = api.participant().await;
        api.add(&s, &p, Body::None).await.no_content();
        members.push(p);
    }
    let p21 = api.participant().await;
    api.add(&s, &p21, Body::None)
        .await
        .conflict(&["session", "full"]);
    api.add(&s, &p21, Body::Json(json!({"sessionId": s})))
        .await
        .conflict(&["session", "full"]);
    assert_eq!(api.get_participant(&p21).await["sessions"], json!([]));
    assert_eq!(api.member_ids(&s).await.len(), 20);

    // Re-adding a member of the full session is not a 21st member.
    api.add(&s, &members[0], Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    assert_eq!(api.subs_of(&s, &members[0]).await, json!({"sessionId": s}));

    // One leaves; now the 21st fits.
    api.remove(&s, &members[19]).await.no_content();
    api.add(&s, &p21, Body::None).await.no_content();
    let listed = api.member_ids(&s).await;
    assert_eq!(listed.len(), 20);
    assert!(listed.contains(&p21) && !listed.contains(&members[19]));
    server.stop().await;
}

/// 50 concurrent adds of distinct participants to one session: exactly 20 succeed.
async fn cap_race(server: &Server, acct: &Account) {
    let api = server.api(acct, "/v1");
    let s = api.session().await;
    let mut candidates = Vec::new();
    for _ in 0..50 {
        candidates.push(api.participant().await);
    }
    let mut set = JoinSet::new();
    for p in candidates.clone() {
        let http = server.http.clone();
        let url = server.url(&api.path(&format!("/sessions/{s}/participants/{p}")));
        let (user, pass) = (acct.user.clone(), acct.pass.clone());
        set.spawn(async move {
            let res = http
                .put(url)
                .basic_auth(user, Some(pass))
                .send()
                .await
                .expect("add request");
            let status = res.status();
            let body = res.text().await.expect("add body");
            (p, status, body)
        });
    }
    let mut added = BTreeSet::new();
    let mut refused = BTreeSet::new();
    while let Some(done) = set.join_next().await {
        let (p, status, body) = done.expect("add task");
        match status {
            StatusCode::NO_CONTENT => {
                assert_eq!(body, "");
                added.insert(p);
            }
            StatusCode::CONFLICT => {
                let v: Value = serde_json::from_str(&body).expect("409 body is JSON");
                let msg = v["error"].as_str().unwrap_or_default();
                assert!(msg.contains("full"), "409 body {body}");
                assert!(v["requestId"].is_string(), "409 body {body}");
                refused.insert(p);
            }
            other => panic!("add returned {other}: {body}"),
        }
    }
    assert_eq!((added.len(), refused.len()), (20, 30));
    assert_eq!(api.member_ids(&s).await, added);
    for p in &added {
        assert_eq!(api.get_participant(p).await["sessions"], json!([s]));
    }
    for p in &refused {
        assert_eq!(api.get_participant(p).await["sessions"], json!([]));
    }
    api.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn cap_race_sqlite() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    cap_race(&server, &acct).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn cap_race_postgres() {
    let server = Server::start(&common::postgres_url()).await;
    let acct = server.account(&unique_account("race")).await;
    cap_race(&server, &acct).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crud_smoke_postgres() {
    let server = Server::start(&common::postgres_url()).await;
    let acct = server.account(&unique_account("crud")).await;
    all_operations(&server.api(&acct, "/v1")).await;
    whisper_routes_and_rewire(&server.api(&acct, "")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_and_deletion() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    let q = api.participant().await;
    api.add(&s, &p, Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    api.add(&s, &q, Body::Json(subs_participants(&[&p])))
        .await
        .no_content();

    // Removing a member removes its subscriptions.
    api.remove(&s, &q).await.no_content();
    api.subs(&s, &q).await.not_found();
    api.set_subs(&s, &q, Body::Json(json!({"sessionId": s})))
        .await
        .not_found();
    let got = api.get_participant(&q).await;
    assert_eq!(got["sessions"], json!([]));
    assert_eq!(got["subscriptions"], json!({}));
    api.remove(&s, &q).await.not_found();
    // Re-joining starts from no subscriptions.
    api.add(&s, &q, Body::None).await.no_content();
    assert_eq!(api.subs_of(&s, &q).await, json!({}));

    // Deleting a session releases its members.
    api.delete(&format!("/sessions/{s}")).await.no_content();
    for m in [&p, &q] {
        let got = api.get_participant(m).await;
        assert_eq!(got["sessions"], json!([]), "{got}");
        assert_eq!(got["subscriptions"], json!({}), "{got}");
    }
    api.get(&format!("/sessions/{s}")).await.not_found();
    api.members(&s).await.not_found();
    api.subs(&s, &p).await.not_found();
    api.get(&format!("/sessions/{s}/routes")).await.not_found();
    api.add(&s, &p, Body::None).await.not_found();
    api.delete(&format!("/sessions/{s}")).await.not_found();
    let s2 = api.session().await;
    api.add(&s2, &p, Body::None).await.no_content();
    api.add(&s2, &q, Body::None).await.no_content();

    // Deleting a participant: gone, out of its session, and a second delete is 404.
    api.delete(&format!("/participants/{p}")).await.no_content();
    api.get(&format!("/participants/{p}")).await.not_found();
    api.delete(&format!("/participants/{p}")).await.not_found();
    api.subs(&s2, &p).await.not_found();
    api.add(&s2, &p, Body::None).await.not_found();
    assert_eq!(api.member_ids(&s2).await, BTreeSet::from([q.clone()]));
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Subscriptions
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_rules_round_trip_and_fully_replace() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let me = api.participant().await;
    let a = api.participant().await;
    let b = api.participant().await;
    let outsider = api.participant().await; // same account, not (yet) a member
    for p in [&me, &a, &b] {
        api.add(&s, p, Body::None).await.no_content();
    }
    let rules = [
        json!({"sessionId": s}),
        json!({"participants": [{"participantId": a}]}),
        json!({"participants": [{"participantId": a}, {"participantId": b}]}),
        json!({"participants": [{"participantId": a, "streamAliases": ["camera", "microphone"]},
                                {"participantId": b}]}),
        json!({"sessionId": s, "participants": [{"participantId": b, "streamAliases": ["screen"]}]}),
        // §10: a participant of the same account that is not a member may be named.
        json!({"participants": [{"participantId": outsider}]}),
        json!({}),
    ];
    for rule in &rules {
        // Through updateParticipantSubscriptions...
        api.set_subs(&s, &me, Body::Json(rule.clone()))
            .await
            .no_content();
        assert_eq!(&api.subs_of(&s, &me).await, rule);
        assert_eq!(&api.get_participant(&me).await["subscriptions"], rule);
        // ...and through addParticipantToSession (re-add).
        api.set_subs(&s, &me, Body::None).await.no_content();
        if rule != &json!({}) {
            api.add(&s, &me, Body::Json(rule.clone()))
                .await
                .no_content();
            assert_eq!(&api.subs_of(&s, &me).await, rule);
        }
    }
    // Full replace, not merge.
    api.set_subs(&s, &me, Body::Json(subs_participants(&[&a])))
        .await
        .no_content();
    api.set_subs(&s, &me, Body::Json(subs_participants(&[&b])))
        .await
        .no_content();
    assert_eq!(api.subs_of(&s, &me).await, subs_participants(&[&b]));
    api.set_subs(&s, &me, Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    assert_eq!(api.subs_of(&s, &me).await, json!({"sessionId": s}));
    // An empty participants list with a sessionId is the whole session.
    api.set_subs(
        &s,
        &me,
        Body::Json(json!({"sessionId": s, "participants": []})),
    )
    .await
    .no_content();
    assert_eq!(api.subs_of(&s, &me).await, json!({"sessionId": s}));
    // The list reflects each member's subscriptions.
    let r = api.members(&s).await;
    let listed = r.ok200().as_array().unwrap().clone();
    let mine = listed
        .iter()
        .find(|m| m["id"] == json!(me))
        .expect("me listed");
    assert_eq!(mine["subscriptions"], json!({"sessionId": s}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_subscriptions_are_400_and_change_nothing() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let other = server.account("other").await;
    let api = server.api(&acct, "/v1");
    let api_other = server.api(&other, "/v1");
    let s = api.session().await;
    let s_other_mine = api.session().await;
    let me = api.participant().await;
    let a = api.participant().await;
    let newcomer = api.participant().await;
    let theirs = api_other.participant().await;
    api.add(&s, &me, Body::Json(subs_participants(&[&a])))
        .await
        .no_content();
    api.add(&s, &a, Body::None).await.no_content();
    let before = subs_participants(&[&a]);

    let unknown = random_uuid();
    let bad: Vec<(Value, &[&str])> = vec![
        // An unknown participant id.
        (subs_participants(&[&unknown]), &["participants"]),
        (subs_participants(&[&a, &unknown]), &["participants"]),
        // Another account's participant.
        (subs_participants(&[&theirs]), &["participants"]),
        // A sessionId different from the path.
        (json!({"sessionId": s_other_mine}), &["sessionId"]),
        (
            json!({"sessionId": random_uuid(), "participants": [{"participantId": a}]}),
            &["sessionId"],
        ),
        // The same participant twice, the same alias twice.
        (subs_participants(&[&a, &a]), &["participants"]),
        (
            json!({"participants": [{"participantId": a, "streamAliases": ["x", "x"]}]}),
            &["streamAliases"],
        ),
        // A non-UUID participantId or sessionId.
        (
            json!({"participants": [{"participantId": "agent"}]}),
            &["participantId"],
        ),
        (json!({"sessionId": "room"}), &["sessionId"]),
    ];
    for (body, needles) in &bad {
        api.set_subs(&s, &me, Body::Json(body.clone()))
            .await
            .bad_request(needles);
        assert_eq!(api.subs_of(&s, &me).await, before, "after {body}");
        // The same through addParticipantToSession: neither membership nor rules change.
        api.add(&s, &me, Body::Json(body.clone()))
            .await
            .bad_request(needles);
        assert_eq!(api.subs_of(&s, &me).await, before, "after {body}");
        api.add(&s, &newcomer, Body::Json(body.clone()))
            .await
            .bad_request(needles);
        assert_eq!(
            api.get_participant(&newcomer).await["sessions"],
            json!([]),
            "a rejected add made {newcomer} a member ({body})"
        );
    }
    assert_eq!(
        api.member_ids(&s).await,
        BTreeSet::from([me.clone(), a.clone()])
    );

    // Subscriptions of a participant that exists but is not a member: 404.
    api.subs(&s, &newcomer).await.not_found();
    api.set_subs(&s, &newcomer, Body::Json(json!({"sessionId": s})))
        .await
        .not_found();
    // Unknown session / participant: 404.
    api.subs(&random_uuid(), &me).await.not_found();
    api.subs(&s, &random_uuid()).await.not_found();
    api.set_subs(&random_uuid(), &me, Body::None)
        .await
        .not_found();
    api.still_serving().await;
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// patchbay extensions: routes, re-wire, OpenAPI, health
// ------------------------------------------------------------------------------------------------

/// Asserts a subscriber's `receives`: exactly these (publisher, cause) pairs, nothing streaming.
#[track_caller]
fn assert_receives(
    routes: &BTreeMap<String, BTreeMap<String, Value>>,
    subscriber: &str,
    expected: &[(&str, &str)],
) {
    let got = routes
        .get(subscriber)
        .unwrap_or_else(|| panic!("{subscriber} is not among the subscribers: {routes:?}"));
    let got_pairs: BTreeSet<(String, String)> = got
        .iter()
        .map(|(p, e)| (p.clone(), e["cause"].as_str().unwrap_or("?").to_owned()))
        .collect();
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(got_pairs, want, "receives of {subscriber}");
    for entry in got.values() {
        assert_eq!(
            entry["streams"],
            json!([]),
            "nothing publishes yet: {entry}"
        );
    }
}

/// The subscriptions of these members.
async fn subs_snapshot(api: &Api<'_>, s: &str, members: &[&str]) -> Vec<Value> {
    let mut out = Vec::new();
    for m in members {
        out.push(api.subs_of(s, m).await);
    }
    out
}

async fn whisper_routes_and_rewire(api: &Api<'_>) {
    let s = api.session().await;
    let caller = api.participant().await;
    let agent = api.participant().await;
    let supervisor = api.participant().await;
    let outsider = api.participant().await;

    // An empty session has no subscribers.
    let (order, routes) = api.routes(&s).await;
    assert!(order.is_empty() && routes.is_empty());

    // The whisper: the caller hears only the agent; agent and supervisor hear the session.
    api.add(&s, &caller, Body::Json(subs_participants(&[&agent])))
        .await
        .no_content();
    api.add(&s, &agent, Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    api.add(&s, &supervisor, Body::Json(json!({"sessionId": s})))
        .await
        .no_content();
    let (order, routes) = api.routes(&s).await;
    let mut sorted = vec![caller.clone(), agent.clone(), supervisor.clone()];
    sorted.sort();
    assert_eq!(
        order, sorted,
        "one entry per member, in participant id order"
    );
    assert_receives(&routes, &caller, &[(&agent, "participant")]);
    assert_receives(
        &routes,
        &agent,
        &[(&caller, "session"), (&supervisor, "session")],
    );
    assert_receives(
        &routes,
        &supervisor,
        &[(&caller, "session"), (&agent, "session")],
    );
    assert_eq!(
        routes[&caller][&agent],
        json!({"publisherId": agent, "cause": "participant", "streams": []})
    );

    // Re-wire several members at once: agent lists both, supervisor hears the agent's mic only.
    let rewire = format!("/sessions/{s}/subscriptions");
    let mic_only = json!({"participants": [{"participantId": agent, "streamAliases": ["mic"]}]});
    api.put(
        &rewire,
        Body::Json(json!({
            agent.clone(): subs_participants(&[&caller, &supervisor]),
            supervisor.clone(): mic_only.clone(),
        })),
    )
    .await
    .no_content();
    assert_eq!(
        api.subs_of(&s, &caller).await,
        subs_participants(&[&agent]),
        "not named: kept"
    );
    assert_eq!(
        api.subs_of(&s, &agent).await,
        subs_participants(&[&caller, &supervisor])
    );
    assert_eq!(api.subs_of(&s, &supervisor).await, mic_only);
    let (_, routes) = api.routes(&s).await;
    assert_receives(&routes, &caller, &[(&agent, "participant")]);
    assert_receives(
        &routes,
        &agent,
        &[(&caller, "participant"), (&supervisor, "participant")],
    );
    assert_receives(&routes, &supervisor, &[(&agent, "streamAlias")]);
    assert_eq!(
        routes[&supervisor][&agent],
        json!({"publisherId": agent, "cause": "streamAlias", "streamAliases": ["mic"], "streams": []})
    );

    // All or nothing: one bad entry and nobody changes.
    let trio = [caller.as_str(), agent.as_str(), supervisor.as_str()];
    let before = subs_snapshot(api, &s, &trio).await;
    let routes_before = api.routes(&s).await;
    let good = json!({"sessionId": s});
    let failures: Vec<(Value, StatusCode)> = vec![
        // One entry names an unknown participant.
        (
            json!({ caller.clone(): good, agent.clone(): subs_participants(&[&random_uuid()]) }),
            StatusCode::BAD_REQUEST,
        ),
        // One entry has a sessionId of another session.
        (
            json!({ caller.clone(): good, supervisor.clone(): {"sessionId": random_uuid()} }),
            StatusCode::BAD_REQUEST,
        ),
        // One key is not a UUID.
        (
            json!({ caller.clone(): good, "agent": good }),
            StatusCode::BAD_REQUEST,
        ),
        // One key is not a member of the session.
        (
            json!({ caller.clone(): good, outsider.clone(): good }),
            StatusCode::NOT_FOUND,
        ),
        // One key does not exist.
        (
            json!({ caller.clone(): good, random_uuid(): good }),
            StatusCode::NOT_FOUND,
        ),
        // One entry has the wrong type.
        (
            json!({ caller.clone(): good, agent.clone(): {"participants": "all"} }),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (body, status) in failures {
        api.put(&rewire, Body::Json(body.clone()))
            .await
            .error(status, &[]);
        assert_eq!(subs_snapshot(api, &s, &trio).await, before, "after {body}");
    }
    api.put(&rewire, raw("[1,2]")).await.bad_request(&[]);
    api.put(&rewire, raw("{")).await.bad_request(&[]);
    assert_eq!(api.routes(&s).await, routes_before);
    api.put(
        &format!("/sessions/{}/subscriptions", random_uuid()),
        Body::Json(json!({})),
    )
    .await
    .not_found();

    // Back to the whisper; then the supervisor leaves and disappears from everyone's routes.
    api.put(
        &rewire,
        Body::Json(json!({
            caller.clone(): subs_participants(&[&agent]),
            agent.clone(): {"sessionId": s},
            supervisor.clone(): {"sessionId": s},
        })),
    )
    .await
    .no_content();
    let (_, routes) = api.routes(&s).await;
    assert_receives(&routes, &caller, &[(&agent, "participant")]);
    assert_receives(
        &routes,
        &agent,
        &[(&caller, "session"), (&supervisor, "session")],
    );
    api.remove(&s, &supervisor).await.no_content();
    let (order, routes) = api.routes(&s).await;
    let mut sorted = vec![caller.clone(), agent.clone()];
    sorted.sort();
    assert_eq!(order, sorted);
    assert_receives(&routes, &caller, &[(&agent, "participant")]);
    assert_receives(&routes, &agent, &[(&caller, "session")]);

    // A member named explicitly stops being routed when it leaves, too.
    api.set_subs(&s, &agent, Body::Json(subs_participants(&[&caller])))
        .await
        .no_content();
    api.remove(&s, &caller).await.no_content();
    let (order, routes) = api.routes(&s).await;
    assert_eq!(order, vec![agent.clone()]);
    assert_receives(&routes, &agent, &[]);

    api.get(&format!("/sessions/{}/routes", random_uuid()))
        .await
        .not_found();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_and_rewire_under_v1() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    whisper_routes_and_rewire(&server.api(&acct, "/v1")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn routes_and_rewire_without_v1_prefix() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    whisper_routes_and_rewire(&server.api(&acct, "")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openapi_document_lists_every_operation() {
    let server = Server::sqlite().await;
    let r = server
        .send(Method::GET, "/openapi.json", Auth::None, Body::None)
        .await;
    let doc = r.ok200().clone();
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "openapi version"
    );
    let paths = doc["paths"].as_object().expect("paths object");
    let mut found = BTreeMap::new();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("path item") {
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                found.insert(id.to_owned(), (method.clone(), path.clone()));
            }
        }
    }
    let base = "/v1/accounts/{accountId}";
    let expected = [
        ("createParticipant", "post", "/participants"),
        ("getParticipant", "get", "/participants/{participantId}"),
        (
            "deleteParticipant",
            "delete",
            "/participants/{participantId}",
        ),
        ("createSession", "post", "/sessions"),
        ("getSession", "get", "/sessions/{sessionId}"),
        ("deleteSession", "delete", "/sessions/{sessionId}"),
        (
            "listSessionParticipants",
            "get",
            "/sessions/{sessionId}/participants",
        ),
        (
            "addParticipantToSession",
            "put",
            "/sessions/{sessionId}/participants/{participantId}",
        ),
        (
            "removeParticipantFromSession",
            "delete",
            "/sessions/{sessionId}/participants/{participantId}",
        ),
        (
            "getParticipantSubscriptions",
            "get",
            "/sessions/{sessionId}/participants/{participantId}/subscriptions",
        ),
        (
            "updateParticipantSubscriptions",
            "put",
            "/sessions/{sessionId}/participants/{participantId}/subscriptions",
        ),
        (
            "rewireSession",
            "put",
            "/sessions/{sessionId}/subscriptions",
        ),
        ("getSessionRoutes", "get", "/sessions/{sessionId}/routes"),
    ];
    let account_paths: BTreeSet<String> = expected
        .iter()
        .map(|(_, _, p)| format!("{base}{p}"))
        .collect();
    assert_eq!(account_paths.len(), 9);
    for (id, method, path) in expected {
        assert_eq!(
            found.get(id),
            Some(&(method.to_owned(), format!("{base}{path}"))),
            "operation {id} in {:?}",
            found
        );
    }
    for path in &account_paths {
        assert!(paths.contains_key(path), "path {path}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_and_readiness() {
    let server = Server::sqlite().await;
    for path in ["/healthz", "/readyz"] {
        let r = server.send(Method::GET, path, Auth::None, Body::None).await;
        assert!(r.ok200().is_object(), "{}: {}", r.what, r.raw);
    }
    server.stop().await;
}

// ------------------------------------------------------------------------------------------------
// Robustness
// ------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keeps_serving_after_garbage() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;

    // Deeply nested JSON, within the size limit.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    api.post("/participants", raw(&deep)).await.bad_request(&[]);
    let deep_obj = format!(
        r#"{{"participants":[{{"participantId":"{p}","streamAliases":{}{}}}]}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    api.add(&s, &p, raw(&deep_obj)).await.bad_request(&[]);
    // Huge numbers, odd escapes, NUL bytes.
    api.post("/participants", raw(r#"{"tag":1e999999}"#))
        .await
        .bad_request(&[]);
    api.post("/participants", raw(r#"{"tag":"\ud800"}"#))
        .await
        .bad_request(&[]);
    api.post("/participants", Body::Raw(b"{\"tag\":\"\0\"}".to_vec()))
        .await
        .bad_request(&[]);
    api.post("/sessions", Body::Raw(vec![0u8; 1000]))
        .await
        .bad_request(&[]);
    // Very long path segments.
    api.get(&format!("/participants/{}", "x".repeat(10_000)))
        .await
        .bad_request(&["participantId"]);
    // Raw garbage over TCP: the connection is answered or closed, the server lives on.
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        &b"GET / HTTP/9.9\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], // a TLS ClientHello start
        &b"POST /v1/accounts/acct/participants HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"
            [..],
    ] {
        let mut stream = tokio::net::TcpStream::connect(server.app.http)
            .await
            .expect("connect");
        stream.write_all(garbage).await.expect("write garbage");
        stream.shutdown().await.expect("shutdown write");
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    api.still_serving().await;
    assert_eq!(api.member_ids(&s).await, BTreeSet::new());
    api.add(&s, &p, Body::None).await.no_content();
    assert_eq!(api.member_ids(&s).await, BTreeSet::from([p]));
    server.stop().await;
}

/// `PUT …/webhooks` answers garbage like every other body: 400 with the JSON error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_settings_refuse_malformed_bodies_with_json_errors() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let api = server.api(&acct, "/v1");
    api.put("/webhooks", Body::None)
        .await
        .bad_request(&["bandwidthOnly"]);
    for garbage in [
        r#"{"bandwidthOnly":"yes"}"#,
        "{",
        "[1]",
        r#"{"bandwidthOnly":true} x"#,
    ] {
        api.put("/webhooks", raw(garbage)).await.bad_request(&[]);
    }
    let set = api
        .put("/webhooks", Body::Json(json!({"bandwidthOnly": true})))
        .await;
    assert_eq!(set.ok(StatusCode::OK)["bandwidthOnly"], json!(true));
    let got = api.get("/webhooks").await;
    assert_eq!(got.ok(StatusCode::OK)["bandwidthOnly"], json!(true));
    api.still_serving().await;
    server.stop().await;
}
