//! Durability: what the API acknowledged survives `kill -9` of the real binary and a restart,
//! on SQLite and on PostgreSQL, and `account create` works while a server runs.

#[path = "../common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_patchbay");

/// A `patchbay serve` child process and its base URL.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &str) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn patchbay");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("read stdout");
            if let Some(url) = line.strip_prefix("patchbay listening on ") {
                break url.trim().to_owned();
            }
        };
        Server { child, base }
    }

    /// SIGKILL: no graceful shutdown, no flush.
    fn kill_9(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `Child::kill` is SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn account_create(db: &str, id: &str) -> (String, String) {
    let out = Command::new(BIN)
        .args(["account", "create", id, "--json", "--database-url", db])
        .output()
        .expect("run account create");
    assert!(
        out.status.success(),
        "account create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["accountId", "password", "username", "webhookSecret"]);
    assert_eq!(v["accountId"], id);
    (
        v["username"].as_str().expect("username").to_owned(),
        v["password"].as_str().expect("password").to_owned(),
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
    user: String,
    pass: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/accounts/{}", self.base, path))
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).expect("json")
            },
        )
    }
}

async fn survives_kill_9(db: String) {
    // The account is created while a server runs on the same database.
    let server = Server::start(&db);
    let (user, pass) = account_create(&db, "durable");
    let api = Api {
        http: reqwest::Client::new(),
        base: server.base.clone(),
        user,
        pass,
    };
    use reqwest::Method;
    let (s, session) = api
        .call(
            Method::POST,
            "durable/sessions",
            Some(json!({"tag": "kept"})),
        )
        .await;
    assert_eq!(s, 200);
    let sid = session["id"].as_str().expect("id").to_owned();
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for tag in ["caller", "agent", "supervisor"] {
        let (s, created) = api
            .call(
                Method::POST,
                "durable/participants",
                Some(json!({"tag": tag, "publishPermissions": ["AUDIO"]})),
            )
            .await;
        assert_eq!(s, 200);
        ids.push(
            created["participant"]["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
        tokens.push(created["token"].as_str().expect("token").to_owned());
    }
    let (caller, agent, supervisor) = (&ids[0], &ids[1], &ids[2]);
    let whisper = json!({"participants": [{"participantId": agent}]});
    let whole = json!({"sessionId": sid});
    assert_eq!(
        api.call(
            Method::PUT,
            &format!("durable/sessions/{sid}/participants/{caller}"),
            Some(whisper.clone())
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api.call(
            Method::PUT,
            &format!("durable/sessions/{sid}/participants/{agent}"),
            Some(whole.clone())
        )
        .await
        .0,
        204
    );
    assert_eq!(
        api.call(
            Method::PUT,
            &format!("durable/sessions/{sid}/participants/{supervisor}"),
            Some(whole.clone())
        )
        .await
        .0,
        204
    );
    let (_, before) = api
        .call(
            Method::GET,
            &format!("durable/sessions/{sid}/participants"),
            None,
        )
        .await;
    let (_, routes_before) = api
        .call(Method::GET, &format!("durable/sessions/{sid}/routes"), None)
        .await;
    // The last acknowledged write before the kill.
    let (s, doomed) = api.call(Method::POST, "durable/participants", None).await;
    assert_eq!(s, 200);
    let doomed = doomed["participant"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        api.call(
            Method::DELETE,
            &format!("durable/participants/{doomed}"),
            None
        )
        .await
        .0,
        204
    );

    server.kill_9();
    let server = Server::start(&db);
    let api = Api {
        base: server.base.clone(),
        ..api
    };

    let (s, got) = api
        .call(Method::GET, &format!("durable/sessions/{sid}"), None)
        .await;
    assert_eq!((s, got), (200, json!({"id": sid, "tag": "kept"})));
    let (_, after) = api
        .call(
            Method::GET,
            &format!("durable/sessions/{sid}/participants"),
            None,
        )
        .await;
    assert_eq!(after, before, "members and their subscriptions survived");
    let (_, routes_after) = api
        .call(Method::GET, &format!("durable/sessions/{sid}/routes"), None)
        .await;
    assert_eq!(routes_after, routes_before);
    let (s, sub) = api
        .call(
            Method::GET,
            &format!("durable/sessions/{sid}/participants/{caller}/subscriptions"),
            None,
        )
        .await;
    assert_eq!((s, sub), (200, whisper));
    assert_eq!(
        api.call(Method::GET, &format!("durable/participants/{doomed}"), None)
            .await
            .0,
        404,
        "the delete survived too"
    );
    server.kill_9();

    // Tokens minted before the crash still verify: the signing secret is durable.
    let store = patchbay::store::open(&db).await.expect("open store");
    let control = patchbay::control::Control::new(std::sync::Arc::new(store))
        .await
        .expect("control");
    for (token, id) in tokens.iter().zip(&ids) {
        let device = control
            .verify_device_token(token)
            .await
            .expect("token still valid");
        assert_eq!(&device.participant.id.to_string(), id);
    }
}

#[tokio::test]
async fn sqlite_survives_kill_9() {
    survives_kill_9(common::sqlite_url()).await;
}

#[tokio::test]
async fn postgres_survives_kill_9() {
    survives_kill_9(common::postgres_url()).await;
}

#[test]
fn account_create_refuses_bad_ids_and_duplicates() {
    let db = common::sqlite_url();
    account_create(&db, "acme");
    for (id, why) in [
        ("acme", "already exists"),
        ("has space", "not an account id"),
        ("waytoolongaccount", "not an account id"),
    ] {
        let out = Command::new(BIN)
            .args(["account", "create", id, "--json", "--database-url", &db])
            .output()
            .expect("run");
        assert!(!out.status.success(), "{id} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{id}: {err}");
    }
}
