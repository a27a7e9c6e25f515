//! Operating the server binary (issue 12): the config file and its precedence, and the
//! graceful drain on SIGTERM with real devices (a WebSocket device and a SIP phone).
//!
//! Every test runs the real `patchbay` binary on its own SQLite database and free ports.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use patchbay_testkit::phone_ua::{self, Dial};
use patchbay_testkit::wait::eventually;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_patchbay");

/// A throwaway directory.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("patchbay-operate-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `patchbay config print` with this file, environment and flags.
fn config_print(file: &str, env: &[(&str, &str)], flags: &[&str]) -> String {
    let dir = TempDir::new();
    let path = dir.0.join("patchbay.toml");
    std::fs::write(&path, file).expect("write");
    let mut cmd = Command::new(BIN);
    cmd.args(["config", "print", "--config"])
        .arg(&path)
        .args(flags);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run patchbay");
    assert!(
        out.status.success(),
        "config print failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in:\n{printed}"))
}

#[test]
fn the_file_is_overridden_by_the_environment_which_is_overridden_by_flags() {
    let file = "media_shards = 3\nhttp_header_timeout = 7\nphone_hold_tone = 440\n\
                public_ip = [\"192.0.2.1\", \"192.0.2.2\"]\nturn_secret = \"s3cret-in-file\"\n\
                database_url = \"postgres://app:hunter2@db.example/patchbay\"\n";
    let env = [
        ("PATCHBAY_MEDIA_SHARDS", "4"),
        ("PATCHBAY_HTTP_HEADER_TIMEOUT", "8"),
    ];
    let printed = config_print(file, &env, &["--media-shards", "5"]);
    assert_eq!(line(&printed, "media_shards"), "media_shards = 5  # flag");
    assert_eq!(
        line(&printed, "http_header_timeout"),
        "http_header_timeout = 8  # env"
    );
    assert_eq!(
        line(&printed, "phone_hold_tone"),
        "phone_hold_tone = 440  # file"
    );
    assert_eq!(
        line(&printed, "public_ip"),
        "public_ip = [\"192.0.2.1\", \"192.0.2.2\"]  # file"
    );
    assert_eq!(
        line(&printed, "phone_rtp_timeout"),
        "phone_rtp_timeout = 30  # default"
    );
    // Secrets are hidden.
    assert!(!printed.contains("s3cret-in-file"), "{printed}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert_eq!(
        line(&printed, "turn_secret"),
        "turn_secret = \"(hidden)\"  # file"
    );
}

#[test]
fn a_bad_file_is_refused_with_the_key_and_the_reason() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.toml");
    for (text, needle) in [
        (
            "media_lisen = \"127.0.0.1:1\"",
            "`media_lisen`: no such setting",
        ),
        ("listen = \"nope\"", "invalid value 'nope' for '--listen"),
        ("media_shards = 0", "--media-shards"),
        ("listen = [1, 2]", "takes one value"),
        ("[listen]\na = 1", "must be a string"),
    ] {
        std::fs::write(&path, text).expect("write");
        let out = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .expect("run patchbay");
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{text:?}: {stderr}");
    }
}

#[test]
fn the_example_config_in_the_repository_is_what_the_binary_generates_and_is_accepted() {
    let out = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .expect("run patchbay");
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).expect("utf-8");
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/patchbay.toml"))
            .expect("deploy/patchbay.toml");
    assert_eq!(
        committed, generated,
        "deploy/patchbay.toml is stale: run `patchbay config example > deploy/patchbay.toml`"
    );
    // Uncommented, every line with a value is a valid setting at its default.
    let uncommented: String = generated
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") && !l.starts_with('('))
        .map(|l| format!("{l}\n"))
        .collect();
    let printed = config_print(&uncommented, &[], &[]);
    assert!(printed.contains("# file"), "{printed}");
    assert!(!printed.contains("# default\nlisten"), "{printed}");
}

/// A `patchbay serve` child process and what it printed.
struct Server {
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    child: Child,
    http: SocketAddr,
    sip: SocketAddr,
}

impl Server {
    fn spawn(mut cmd: Command) -> Server {
        // PATCHBAY_TEST_SERVER_LOGS=1 shows the servers' logs.
        let stderr = if std::env::var_os("PATCHBAY_TEST_SERVER_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn patchbay");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut http, mut sip) = (None, None);
        while http.is_none() || sip.is_none() {
            let line = lines.next().expect("server exited").expect("stdout");
            if let Some(a) = line.strip_prefix("patchbay listening on http://") {
                http = a.trim().parse().ok();
            }
            if let Some(a) = line.strip_prefix("patchbay SIP on ") {
                sip = a.split_whitespace().next().and_then(|a| a.parse().ok());
            }
        }
        Server {
            // Kept open: the server prints nothing more after its addresses.
            _stdout: lines,
            child,
            http: http.expect("http address"),
            sip: sip.expect("sip address"),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (60 s at most, a bound against hanging); its exit code.
    async fn exit_code(&mut self) -> Option<i32> {
        let child = std::sync::Mutex::new(&mut self.child);
        let code = std::sync::Mutex::new(None);
        eventually("the server exits", Duration::from_secs(60), || async {
            let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
            match child.try_wait() {
                Ok(Some(status)) => {
                    *code.lock().unwrap_or_else(|e| e.into_inner()) = status.code();
                    true
                }
                _ => false,
            }
        })
        .await;
        let code = *code.lock().unwrap_or_else(|e| e.into_inner());
        code
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(db: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--media-listen",
        "127.0.0.1:0",
        "--sip-listen",
        "127.0.0.1:0",
        "--rtp-ports",
        "0-0",
        "--database-url",
        db,
    ])
    .args(extra);
    cmd
}

#[tokio::test]
async fn a_server_starts_from_a_config_file_alone() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let path = dir.0.join("patchbay.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\nmedia_listen = \"127.0.0.1:0\"\nsip_listen = \"127.0.0.1:0\"\n\
             rtp_ports = \"0-0\"\ndatabase_url = \"{db}\"\n"
        ),
    )
    .expect("write");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve").env("PATCHBAY_CONFIG", &path);
    let server = Server::spawn(cmd);
    let ready = reqwest::get(format!("http://{}/readyz", server.http))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

/// An account, a session and `n` participants in it; their tokens.
async fn session_with(http: SocketAddr, db: &str, n: usize) -> (String, Vec<String>) {
    let out = Command::new(BIN)
        .args(["account", "create", "ops", "--json", "--database-url", db])
        .output()
        .expect("account create");
    assert!(out.status.success());
    let creds: Value = serde_json::from_slice(&out.stdout).expect("json");
    let (user, pass) = (
        creds["username"].as_str().expect("username").to_owned(),
        creds["password"].as_str().expect("password").to_owned(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://{http}/v1/accounts/ops");
    let session: Value = client
        .post(format!("{base}/sessions"))
        .basic_auth(&user, Some(&pass))
        .json(&json!({}))
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    let session = session["id"].as_str().expect("id").to_owned();
    let mut tokens = Vec::new();
    for i in 0..n {
        let p: Value = client
            .post(format!("{base}/participants"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"publishPermissions": ["AUDIO"], "tag": format!("p{i}")}))
            .send()
            .await
            .expect("participant")
            .json()
            .await
            .expect("json");
        let id = p["participant"]["id"].as_str().expect("participant id");
        let status = client
            .put(format!("{base}/sessions/{session}/participants/{id}"))
            .basic_auth(&user, Some(&pass))
            .json(&json!({"sessionId": session}))
            .send()
            .await
            .expect("add")
            .status();
        assert!(status.is_success(), "{status}");
        tokens.push(p["token"].as_str().expect("token").to_owned());
    }
    (format!("{base}/sessions/{session}|{user}|{pass}"), tokens)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn device(http: SocketAddr, token: &str) -> Ws {
    let url = format!(
        "ws://{http}/v3/?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={}",
        uuid::Uuid::new_v4()
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

/// A device whose connection the server has taken (verified, placed): it answers a request.
async fn connected_device(http: SocketAddr, token: &str) -> Ws {
    let mut ws = device(http, token).await;
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"nosuch","params":{}}"#.into(),
    ))
    .await
    .expect("send");
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert!(t.contains("\"error\""), "{t}"),
        other => panic!("no answer from a connected device: {other:?}"),
    }
    ws
}

/// The close frame the server ends `ws` with (skipping other frames).
async fn close_of(ws: &mut Ws) -> (CloseCode, String) {
    close_within(ws, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("no close frame within 60 s"))
}

/// The close frame the server ends `ws` with, if one comes within `wait`.
async fn close_within(ws: &mut Ws, wait: Duration) -> Option<(CloseCode, String)> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return Some((frame.code, frame.reason.to_string()))
            }
            Ok(Some(Ok(_))) => continue,
            Err(_) => return None,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn sigterm_drains_then_closes_devices_and_calls_and_exits_0_keeping_state() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    // A first start creates the schema for `account create`. With `--drain-phones hang-up`
    // the stop hangs the phone up (by default it would be left up for a successor:
    // tests/interop/browser/restart.test.mjs).
    let mut server = Server::spawn(serve(
        &db,
        &["--drain-timeout", "4", "--drain-phones", "hang-up"],
    ));
    let (session, tokens) = session_with(server.http, &db, 3).await;
    let mut browser = connected_device(server.http, &tokens[0]).await;
    let phone = phone_ua::dial(server.sip, &Dial::with_token(&tokens[1]))
        .await
        .unwrap_or_else(|r| panic!("phone refused: {r:?}"));
    phone.play_tone(440.0);

    server.signal("TERM");
    let client = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", server.http);
    eventually(
        "/readyz answers 503 draining",
        Duration::from_secs(10),
        || async {
            let r = client.get(&readyz).send().await.expect("readyz");
            r.status() == 503
                && r.json::<Value>().await.expect("json")["error"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("draining")
        },
    )
    .await;

    // A new device is refused with 1013 "server draining"; a new call with 503.
    let mut late = device(server.http, &tokens[2]).await;
    assert_eq!(
        close_of(&mut late).await,
        (CloseCode::Again, "server draining".to_owned())
    );
    match phone_ua::dial(server.sip, &Dial::with_token(&tokens[2])).await {
        Err(refused) => assert_eq!(refused.code, 503, "{refused:?}"),
        Ok(_) => panic!("a call was admitted while draining"),
    }
    // The connected browser and phone are still up, then closed after the drain timeout.
    assert!(!phone.bye_received());
    assert_eq!(
        close_of(&mut browser).await,
        (CloseCode::Away, "server shutting down".to_owned())
    );
    eventually("the phone gets BYE", Duration::from_secs(30), || async {
        phone.bye_received()
    })
    .await;
    assert_eq!(server.exit_code().await, Some(0));

    // What was acknowledged is still there after a restart.
    let again = Server::spawn(serve(&db, &[]));
    let mut parts = session.split('|');
    let (url, user, pass) = (
        parts.next().expect("url"),
        parts.next().expect("user"),
        parts.next().expect("pass"),
    );
    let url = url.replace(&server.http.to_string(), &again.http.to_string());
    let members: Value = client
        .get(format!("{url}/participants"))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .expect("members")
        .json()
        .await
        .expect("json");
    assert_eq!(members.as_array().map(Vec::len), Some(3), "{members}");
}

#[tokio::test]
async fn a_second_signal_stops_at_once() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let mut server = Server::spawn(serve(&db, &["--drain-timeout", "600"]));
    let (_, tokens) = session_with(server.http, &db, 1).await;
    let _browser = connected_device(server.http, &tokens[0]).await;
    server.signal("TERM");
    let readyz = format!("http://{}/readyz", server.http);
    eventually("/readyz answers 503", Duration::from_secs(10), || async {
        reqwest::get(&readyz).await.expect("readyz").status() == 503
    })
    .await;
    server.signal("INT");
    // Without the second signal it would wait 600 s for the device.
    assert_eq!(server.exit_code().await, Some(130));
}

// ---- the operator commands ------------------------------------------------------------------

/// Runs `patchbay ARGS… --database-url DB`; its stdout (it must succeed).
fn cli(db: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--database-url", db])
        .output()
        .expect("run patchbay");
    assert!(
        out.status.success(),
        "patchbay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

async fn status_with(http: SocketAddr, user: &str, pass: &str) -> u16 {
    reqwest::Client::new()
        .get(format!(
            "http://{http}/v1/accounts/ops/participants/00000000-0000-0000-0000-000000000000"
        ))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[tokio::test]
async fn accounts_are_listed_and_rotated_credentials_replace_the_old_ones() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let server = Server::spawn(serve(&db, &[]));
    let (_, _) = session_with(server.http, &db, 2).await;
    let list: Value =
        serde_json::from_str(&cli(&db, &["account", "list", "--json"])).expect("json");
    assert_eq!(list[0]["accountId"], "ops", "{list}");
    assert_eq!(list[0]["sessions"], 1, "{list}");
    assert_eq!(list[0]["participants"], 2, "{list}");
    let old_user = list[0]["username"].as_str().expect("username").to_owned();
    assert!(cli(&db, &["account", "list"]).contains(&old_user));

    // The webhook secret rotates on its own, printed once; an unknown account is an error.
    let rotated: Value = serde_json::from_str(&cli(
        &db,
        &[
            "account",
            "rotate-webhook-secret",
            "ops",
            "--grace",
            "60",
            "--json",
        ],
    ))
    .expect("json");
    assert_eq!(rotated["accountId"], "ops", "{rotated}");
    assert!(
        rotated["webhookSecret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_")),
        "{rotated}"
    );
    let unknown = Command::new(BIN)
        .args([
            "account",
            "rotate-webhook-secret",
            "nobody",
            "--database-url",
            &db,
        ])
        .output()
        .expect("run patchbay");
    assert!(!unknown.status.success());

    // The credentials session_with used are gone from here; get the current ones by rotating
    // twice: the first rotation's credentials must work, then stop working after the second.
    let first: Value =
        serde_json::from_str(&cli(&db, &["account", "rotate", "ops", "--json"])).expect("json");
    let (u1, p1) = (
        first["username"].as_str().expect("username").to_owned(),
        first["password"].as_str().expect("password").to_owned(),
    );
    assert_ne!(u1, old_user);
    assert_eq!(
        status_with(server.http, &u1, &p1).await,
        404,
        "new credentials work"
    );
    let second: Value =
        serde_json::from_str(&cli(&db, &["account", "rotate", "ops", "--json"])).expect("json");
    let (u2, p2) = (
        second["username"].as_str().expect("username").to_owned(),
        second["password"].as_str().expect("password").to_owned(),
    );
    eventually(
        "the rotated-away credentials stop working",
        Duration::from_secs(30),
        || {
            let (u1, p1) = (u1.clone(), p1.clone());
            async move { status_with(server.http, &u1, &p1).await == 401 }
        },
    )
    .await;
    assert_eq!(status_with(server.http, &u2, &p2).await, 404);
    // Garbage is refused with a message.
    let out = Command::new(BIN)
        .args(["account", "rotate", "no such!", "--database-url", &db])
        .output()
        .expect("run");
    assert!(!out.status.success());
}

#[tokio::test]
async fn sessions_list_and_inspect_show_members_live_devices_calls_and_who_hears_whom() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let server = Server::spawn(serve(&db, &[]));
    let (session, tokens) = session_with(server.http, &db, 2).await;
    let session_id = session
        .split('|')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .expect("session id")
        .to_owned();
    let _browser = device(server.http, &tokens[0]).await;
    let phone = phone_ua::dial(server.sip, &Dial::with_token(&tokens[1]))
        .await
        .unwrap_or_else(|r| panic!("phone refused: {r:?}"));
    phone.play_tone(440.0);

    // The live state is written from the lifecycle feed: wait for it.
    let list = std::sync::Mutex::new(Value::Null);
    eventually(
        "session list shows one browser and one phone",
        Duration::from_secs(30),
        || async {
            let v: Value =
                serde_json::from_str(&cli(&db, &["session", "list", "--json"])).expect("json");
            let ok = v[0]["browsers"] == 1 && v[0]["phones"] == 1;
            *list.lock().unwrap_or_else(|e| e.into_inner()) = v;
            ok
        },
    )
    .await;
    let list = list.into_inner().unwrap_or_else(|e| e.into_inner());
    assert_eq!(list[0]["sessionId"], session_id.as_str(), "{list}");
    assert_eq!(list[0]["members"], 2, "{list}");
    let text = cli(&db, &["session", "list", "--account", "ops"]);
    assert!(text.contains(&session_id), "{text}");

    let inspected = std::sync::Mutex::new(Value::Null);
    eventually(
        "inspect shows the phone's stream forwarded",
        Duration::from_secs(30),
        || async {
            let v: Value = serde_json::from_str(&cli(
                &db,
                &["session", "inspect", "ops", &session_id, "--json"],
            ))
            .expect("json");
            let ok = v["streams"].as_array().is_some_and(|s| s.len() == 1);
            *inspected.lock().unwrap_or_else(|e| e.into_inner()) = v;
            ok
        },
    )
    .await;
    let v = inspected.into_inner().unwrap_or_else(|e| e.into_inner());
    assert_eq!(v["streams"][0]["alias"], "phone", "{v}");
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(2), "{v}");
    // Everyone subscribes to the session: the browser's participant hears the phone's stream.
    let browser_participant = v["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["kind"] == "browser"))
        .map(|d| d["participantId"].clone())
        .expect("browser device");
    let routes = &v["routes"]["subscribers"];
    let hears = routes
        .as_array()
        .and_then(|s| s.iter().find(|s| s["participantId"] == browser_participant))
        .expect("browser's routes");
    assert_eq!(hears["receives"][0]["streams"][0]["alias"], "phone", "{v}");
    let text = cli(&db, &["session", "inspect", "ops", &session_id]);
    assert!(text.contains("phone call"), "{text}");
    assert!(text.contains("p0 ("), "{text}");
    assert!(text.contains("phone [AUDIO]"), "{text}");
    // The serving process records each device's media quality (issue 21) every few seconds:
    // the phone's is its RTP leg, as the SIP bridge measured it (the test phone sends G.711).
    let phone_participant = v["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["kind"] == "phone"))
        .map(|d| d["participantId"].clone())
        .expect("phone device");
    eventually(
        "inspect shows the phone's recorded quality",
        Duration::from_secs(30),
        || async {
            let v: Value = serde_json::from_str(&cli(
                &db,
                &["session", "inspect", "ops", &session_id, "--json"],
            ))
            .expect("json");
            v["quality"].as_array().is_some_and(|q| {
                q.iter().any(|q| {
                    q["participantId"] == phone_participant
                        && q["summary"]["device"] == "phone"
                        && q["stale"] == false
                        && q["summary"]["publish"]["packets"]
                            .as_u64()
                            .is_some_and(|n| n > 0)
                })
            })
        },
    )
    .await;
    let text = cli(&db, &["session", "inspect", "ops", &session_id]);
    let phone_id = phone_participant.as_str().expect("participant id");
    let phone_block = text
        .split_once(phone_id)
        .map(|(_, rest)| rest.split("\n  p").next().unwrap_or(rest))
        .expect("the phone's member block");
    let quality = phone_block
        .lines()
        .find(|l| l.trim_start().starts_with("quality:"))
        .expect("the phone's quality line");
    assert!(
        quality.contains(" in ") && quality.contains("kbit/s") && quality.contains("jitter "),
        "{text}"
    );
    assert!(!quality.contains("no media connection measured"), "{text}");

    // A session that does not exist is an error, not an empty answer.
    let out = Command::new(BIN)
        .args([
            "session",
            "inspect",
            "ops",
            "00000000-0000-0000-0000-000000000000",
            "--database-url",
            &db,
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session not found"));

    // After the call ends, the phone is no longer listed.
    assert!(phone.hangup().await);
    eventually(
        "the call is gone from the list",
        Duration::from_secs(30),
        || async {
            let v: Value =
                serde_json::from_str(&cli(&db, &["session", "list", "--json"])).expect("json");
            v[0]["phones"] == 0 && v[0]["browsers"] == 1
        },
    )
    .await;
}

#[tokio::test]
async fn a_rotated_token_secret_without_grace_refuses_old_tokens_and_signs_new_ones() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let server = Server::spawn(serve(&db, &[]));
    let (session, tokens) = session_with(server.http, &db, 1).await;
    let out = cli(&db, &["token-secret", "rotate", "--grace", "0"]);
    assert!(out.contains("no longer verify"), "{out}");
    eventually(
        "the old token is refused",
        Duration::from_secs(30),
        || async {
            let mut ws = device(server.http, &tokens[0]).await;
            // A token that still verifies connects: no close frame comes.
            close_within(&mut ws, Duration::from_secs(1))
                .await
                .is_some_and(|(code, reason)| {
                    code == CloseCode::Normal && reason.contains("signature")
                })
        },
    )
    .await;
    // A participant created now gets a token signed with the new secret, which connects.
    let mut parts = session.split('|');
    let (url, user, pass) = (
        parts.next().expect("url"),
        parts.next().expect("user"),
        parts.next().expect("pass"),
    );
    let base = url.split("/sessions/").next().expect("base");
    let p: Value = reqwest::Client::new()
        .post(format!("{base}/participants"))
        .basic_auth(user, Some(pass))
        .json(&json!({}))
        .send()
        .await
        .expect("participant")
        .json()
        .await
        .expect("json");
    // A connected device gets no close frame: it answers a request.
    connected_device(server.http, p["token"].as_str().expect("token")).await;
}

/// A grace longer than a token's lifetime would keep a replaced secret verifying nothing more
/// for up to 2^64 s: refused with the bound, and the secret is not rotated.
#[test]
fn a_token_secret_grace_beyond_a_tokens_lifetime_is_refused() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    for grace in ["86401", "18446744073709551615"] {
        let out = Command::new(BIN)
            .args([
                "token-secret",
                "rotate",
                "--grace",
                grace,
                "--database-url",
                &db,
            ])
            .output()
            .expect("run patchbay");
        assert_eq!(out.status.code(), Some(2), "--grace {grace}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("0..=86400"), "--grace {grace}: {stderr}");
    }
    assert!(
        !dir.0.join("db.sqlite").exists(),
        "a refused command opened no database"
    );
}

/// Issue 20: a second `patchbay serve` on the SQLite file another one serves refuses to start
/// and says why, while operator commands still run beside the first; once the first is gone
/// (killed: the operating system releases its lock), a new server starts on the file.
#[tokio::test]
async fn a_second_server_on_one_sqlite_file_refuses_to_start() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let first = Server::spawn(serve(&db, &[]));
    let second = serve(&db, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run a second server");
    assert!(!second.status.success(), "the second server started");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("another `patchbay serve` is using the database"),
        "{said}"
    );
    cli(&db, &["account", "create", "beside"]);
    drop(first);
    let third = Server::spawn(serve(&db, &[]));
    let ready = reqwest::get(format!("http://{}/readyz", third.http))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

/// Runs `patchbay serve` on the embedded database in `data` (no --database-url) until it says
/// where it listens; what it printed up to there. Panics if it exits first.
fn first_lines(data: &std::path::Path, extra: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--media-listen",
            "127.0.0.1:0",
            "--sip-listen",
            "127.0.0.1:0",
            "--rtp-ports",
            "0-0",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn patchbay");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    for line in lines {
        let line = line.expect("stdout");
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("patchbay listening on") {
            return (child, printed);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the server exited before listening: {printed}");
}

/// Issue 23: a first start that fails (its HTTP port is taken) creates no account, so the
/// next start creates `dev` and prints its credentials with the way to get new ones;
/// `--dev-account false` creates none (the next start without it still finds no account).
#[test]
fn the_dev_account_is_created_by_the_first_start_that_succeeds_unless_refused() {
    let dir = TempDir::new();
    let data = dir.0.join("data");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let failed = Command::new(BIN)
        .args(["serve", "--listen", &port, "--media-listen", "127.0.0.1:0"])
        .args([
            "--sip-listen",
            "127.0.0.1:0",
            "--rtp-ports",
            "0-0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run");
    assert!(!failed.status.success(), "started on a taken port");
    let said = String::from_utf8_lossy(&failed.stdout);
    assert!(!said.contains("password:"), "{said}");
    drop(taken);
    let (mut child, printed) = first_lines(&data, &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        printed.contains("created the account \"dev\"")
            && printed.contains("password: ")
            && printed.contains("`patchbay account rotate dev` prints new ones"),
        "{printed}"
    );

    let refused = dir.0.join("refused");
    let (mut child, printed) = first_lines(&refused, &["--dev-account", "false"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(!printed.contains("created the account"), "{printed}");
    let (mut child, printed) = first_lines(&refused, &[]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed.contains("created the account \"dev\""), "{printed}");

    // Under --log-format json the credentials are a JSON line too, like every line printed.
    let (mut child, printed) = first_lines(&dir.0.join("json"), &["--log-format", "json"]);
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<serde_json::Value> = printed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let created = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("created the account"))
        })
        .unwrap_or_else(|| panic!("no credentials line: {printed}"));
    assert_eq!(created["account"], "dev");
    assert!(created["password"].as_str().is_some_and(|p| p.len() >= 20));
}

/// Issue 23: the operator commands that read a database do not answer from a new, empty one
/// made by a forgotten flag: a data directory or an SQLite URL with no database is refused,
/// naming the file, and nothing is created; `account create` still creates it.
#[test]
fn operator_commands_refuse_a_database_that_does_not_exist() {
    let dir = TempDir::new();
    let data = dir.0.join("forgotten");
    let file = dir.0.join("nothing.sqlite");
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let data_arg = data.display().to_string();
    for args in [
        vec!["session", "list", "--data-dir", &data_arg],
        vec!["account", "list", "--data-dir", &data_arg],
        vec!["cluster", "status", "--data-dir", &data_arg],
        vec!["token-secret", "rotate", "--data-dir", &data_arg],
        vec!["session", "list", "--database-url", &url],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("DATABASE_URL")
            .env_remove("PATCHBAY_DATA_DIR")
            .output()
            .expect("run");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            said.contains("no patchbay database at") || said.contains("no database at"),
            "{args:?}: {said}"
        );
        assert!(
            said.contains("forgotten") || said.contains("nothing.sqlite"),
            "{said}"
        );
    }
    assert!(!data.exists(), "a data directory was created");
    assert!(!file.exists(), "a database file was created");
    let out = Command::new(BIN)
        .args(["account", "create", "first", "--database-url", &url])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(file.exists(), "account create made the database");
    assert!(cli(&url, &["account", "list"]).contains("first"));
}

/// Issue 23: a start on a database with no account (PostgreSQL or a given SQLite URL, where no
/// `dev` account is made) says how to make one; a database that cannot be opened says why in
/// terms a user can act on (an SQLite file that does not exist without `?mode=rwc`, a
/// PostgreSQL that refuses connections).
#[tokio::test]
async fn a_start_says_how_to_get_an_account_and_why_a_database_cannot_be_opened() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new();
    let db = format!("sqlite://{}?mode=rwc", dir.0.join("db.sqlite").display());
    let mut child = serve(&db, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut printed = String::new();
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let line = line.expect("stdout");
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("patchbay listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        printed.contains("no account yet") && printed.contains("patchbay account create"),
        "{printed}"
    );

    let missing = dir.0.join("missing.sqlite");
    let out = serve(&format!("sqlite://{}", missing.display()), &[])
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("add ?mode=rwc"), "{said}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let out = serve(
        &format!("postgres://postgres@{closed}/nothing"),
        &["--database-acquire-timeout", "1"],
    )
    .output()
    .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!("{closed}: Connection refused")),
        "{said}"
    );
}
