//! Logs that answer questions and keep secrets (issue 12), against the real binary with JSON
//! logs at `RUST_LOG=debug`: a device connects over the WebSocket with its token, REST calls
//! carry Basic credentials (right and wrong), a request fails with a 400. Then:
//! - no secret appears anywhere in stdout or stderr: the device token, the password, the
//!   `Authorization` values, a wrong password, the account's webhook secret;
//! - every stderr line is one JSON object;
//! - the 400's body `requestId` is its `x-request-id` header, and a log line at INFO carries
//!   it with the reason of the refusal;
//! - the WebSocket upgrade's request is logged (with its path, not its query).
#![allow(clippy::disallowed_methods)] // a test runs the binary and reads its output

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    child: Child,
    http: SocketAddr,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::path::PathBuf,
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_patchbay"))
}

/// Starts the server on `database` with JSON logs at debug; stderr goes to `stderr`.
fn start(database: &str, stderr: std::path::PathBuf) -> Server {
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--media-listen",
            "127.0.0.1:0",
        ])
        .args(["--media-shards", "1", "--sip-listen", "127.0.0.1:0"])
        .args(["--database-url", database, "--log-format", "json"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("the patchbay binary");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut seen = String::new();
    let mut http = None;
    while http.is_none() {
        let mut line = String::new();
        if reader.read_line(&mut line).expect("a line") == 0 {
            panic!("the server stopped: {seen}");
        }
        // Under --log-format json every line the server prints is a JSON object, the start-up
        // lines included.
        let printed: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert_eq!(printed["level"], "INFO", "{printed}");
        assert!(printed["timestamp"].as_str().is_some_and(|t| !t.is_empty()));
        let message = printed["message"].as_str().unwrap_or_default();
        if let Some(rest) = message.strip_prefix("patchbay listening on http://") {
            http = rest.parse().ok();
        }
        seen.push_str(&line);
    }
    // The rest of stdout is kept for the secret check.
    let stdout = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        seen + &rest
    });
    Server {
        child,
        http: http.expect("address"),
        stdout,
        stderr,
    }
}

#[tokio::test]
async fn logs_carry_request_ids_and_reasons_and_never_secrets() {
    let dir = std::env::temp_dir().join(format!("patchbay-logs-{:016x}", rand_id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);
    let database = format!("sqlite://{}/patchbay.db?mode=rwc", dir.0.display());
    let created = bin()
        .args([
            "account",
            "create",
            "logs",
            "--json",
            "--database-url",
            &database,
        ])
        .output()
        .expect("account create");
    assert!(created.status.success(), "{created:?}");
    let creds: Value = serde_json::from_slice(&created.stdout).expect("JSON credentials");
    let user = creds["username"].as_str().expect("username").to_owned();
    let pass = creds["password"].as_str().expect("password").to_owned();
    let webhook_secret = creds["webhookSecret"].as_str().expect("secret").to_owned();

    let server = start(&database, dir.0.join("stderr.log"));
    let base = format!("http://{}/v1/accounts/logs", server.http);
    let client = reqwest::Client::new();

    // A participant (Basic credentials), and its device on the WebSocket (the token).
    let participant: Value = client
        .post(format!("{base}/participants"))
        .basic_auth(&user, Some(&pass))
        .json(&serde_json::json!({"publishPermissions": ["AUDIO"]}))
        .send()
        .await
        .expect("REST")
        .error_for_status()
        .expect("created")
        .json()
        .await
        .expect("JSON");
    let token = participant["token"].as_str().expect("token").to_owned();
    let url = format!("ws://{}/v3?token={token}&uniqueId=logs-test", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","method":"ping","id":1}"#.into(),
    ))
    .await
    .expect("send");
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) if t.contains("\"id\":1") => break,
            _ => continue,
        }
    }
    let _ = ws.close(None).await;

    // Wrong credentials: 401.
    let wrong_pass = "not-the-password-7f3a9c";
    let refused = client
        .get(format!("{base}/webhooks"))
        .basic_auth(&user, Some(wrong_pass))
        .send()
        .await
        .expect("REST");
    assert_eq!(refused.status(), 401);

    // A 400 with a body: its requestId is the response's x-request-id.
    let bad = client
        .get(format!("{base}/sessions/not-a-session-id"))
        .basic_auth(&user, Some(&pass))
        .send()
        .await
        .expect("REST");
    assert_eq!(bad.status(), 400);
    let header_id = bad.headers()["x-request-id"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body: Value = bad.json().await.expect("JSON body");
    let request_id = body["requestId"].as_str().expect("requestId").to_owned();
    assert_eq!(request_id, header_id, "the body's id is the response's");
    let reason = body["error"].as_str().expect("error").to_owned();

    // No credentials at all: a 401 with a reason of its own in the log.
    let bare = client
        .get(format!("{base}/webhooks"))
        .send()
        .await
        .expect("REST");
    assert_eq!(bare.status(), 401);
    // Wrong passwords until the username's budget is spent: the 429's body names the request's
    // own id (its x-request-id header, and its log line below).
    let mut limited = None;
    for _ in 0..100 {
        let attempt = client
            .get(format!("{base}/webhooks"))
            .basic_auth(&user, Some(wrong_pass))
            .send()
            .await
            .expect("REST");
        if attempt.status() == 429 {
            limited = Some(attempt);
            break;
        }
        assert_eq!(attempt.status(), 401);
    }
    let limited = limited.expect("a 429 once the username's budget is spent");
    let limited_id = limited.headers()["x-request-id"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let body: Value = limited.json().await.expect("JSON body");
    assert_eq!(
        body["requestId"],
        limited_id.as_str(),
        "the 429's id is the request's"
    );

    // A sane id from the client is kept; anything else is replaced.
    let kept = client
        .get(format!("http://{}/healthz", server.http))
        .header("x-request-id", "lb-1234.abc")
        .send()
        .await
        .expect("healthz");
    assert_eq!(kept.headers()["x-request-id"], "lb-1234.abc");
    let replaced = client
        .get(format!("http://{}/healthz", server.http))
        .header("x-request-id", "spaces and \"quotes\"")
        .send()
        .await
        .expect("healthz");
    assert_ne!(replaced.headers()["x-request-id"], "spaces and \"quotes\"");

    // Stop the server and read everything it wrote.
    let Server {
        mut child,
        stdout,
        stderr,
        ..
    } = server;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().expect("exit");
    assert!(status.success(), "exit status {status:?}");
    let stdout = stdout.join().expect("stdout reader");
    let stderr = std::fs::read_to_string(&stderr).expect("stderr");
    assert!(
        stderr.lines().count() > 10,
        "debug logs were written: {stderr}"
    );

    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secrets = [
        ("the device token", token.clone()),
        ("the password", pass.clone()),
        ("the Basic credentials", b64(&format!("{user}:{pass}"))),
        ("a wrong password", wrong_pass.to_owned()),
        (
            "wrong Basic credentials",
            b64(&format!("{user}:{wrong_pass}")),
        ),
        ("the webhook secret", webhook_secret.clone()),
    ];
    for (what, secret) in &secrets {
        for (stream, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            if let Some(line) = text.lines().find(|l| l.contains(secret.as_str())) {
                panic!("{what} appears in {stream}: {line}");
            }
        }
        // Also its longest part a log line could carry alone (a JWT's signature).
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() >= 16) {
            assert!(
                !stderr.contains(signature),
                "part of {what} appears in stderr"
            );
        }
    }

    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    // A line written while a request is handled names it under `request`.
    let request_field = |l: &Value, k: &str| l["request"][k].as_str().map(str::to_owned);
    // The 400 is logged at INFO with its reason and the body's request id.
    let refusal = lines
        .iter()
        .find(|l| {
            l["level"] == "INFO"
                && request_field(l, "id").as_deref() == Some(request_id.as_str())
                && l["reason"].as_str() == Some(reason.as_str())
        })
        .unwrap_or_else(|| {
            panic!("no INFO line with request id {request_id} and the reason {reason:?}:\n{stderr}")
        });
    assert_eq!(refusal["status"], 400);
    // The 401s too, each with why.
    for why in [
        "unknown username or wrong password",
        "no Basic credentials (Authorization header missing or malformed)",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l["level"] == "INFO" && l["status"] == 401 && l["reason"] == why),
            "no 401 logged with the reason {why:?}:\n{stderr}"
        );
    }
    // And the 429, under the id its body gave.
    assert!(
        lines.iter().any(|l| l["status"] == 429
            && request_field(l, "id").as_deref() == Some(limited_id.as_str())),
        "no log line of the 429 with its id {limited_id}:\n{stderr}"
    );
    // The upgrade's request was logged: its path, not its query.
    let upgrade = lines
        .iter()
        .find(|l| request_field(l, "path").as_deref() == Some("/v3"))
        .unwrap_or_else(|| panic!("no line of the WebSocket request:\n{stderr}"));
    assert_eq!(upgrade["request"]["method"], "GET");
    // Every line of a request carries its id, and the lines of the 400 are all its own.
    for l in lines.iter().filter(|l| !l["request"].is_null()) {
        assert!(
            request_field(l, "id").is_some_and(|id| !id.is_empty()),
            "{l}"
        );
    }
    let of_the_400: Vec<&Value> = lines
        .iter()
        .filter(|l| request_field(l, "id").as_deref() == Some(request_id.as_str()))
        .collect();
    assert!(
        of_the_400
            .iter()
            .all(|l| request_field(l, "path").as_deref()
                == Some("/v1/accounts/logs/sessions/not-a-session-id")),
        "{of_the_400:?}"
    );
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
