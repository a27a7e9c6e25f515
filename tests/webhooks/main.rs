//! Webhooks end to end: a real HTTP receiver in the test process checks every delivery's
//! Standard Webhooks signature, answers 500 and then times out on purpose for the first
//! attempts of each event, and records what arrives; devices connect over the real WebSocket,
//! leave and disconnect. Every event arrives once per id, in order per participant, with
//! Bandwidth's exact body for its three events. Then `kill -9` of the real binary with events
//! pending and the receiver down: after a restart every event is delivered, none lost.
// A test harness: the receiver and the server run as tasks, the receiver hangs on purpose, and
// the test polls for deliveries.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use futures_util::SinkExt;
use hmac::{Hmac, Mac};
use patchbay::app::App;
use patchbay::config::ServeConfig;
use patchbay::control::{Control, NewParticipant};
use patchbay::domain::{AccountId, CallbackUrl, Tag};
use patchbay_testkit::db::sqlite_url;
use serde_json::Value;
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

/// One delivery the receiver accepted.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    body: String,
}

/// The receiver's state: the secret it verifies with, attempts per id, accepted deliveries.
#[derive(Default)]
struct Receiver {
    secret: Mutex<String>,
    /// Fail the first attempts of each id: 500, then a hang longer than the attempt timeout.
    flaky: bool,
    /// How long each answer takes.
    delay: Duration,
    attempts: Mutex<HashMap<String, u32>>,
    accepted: Mutex<Vec<Delivery>>,
    bad_signatures: Mutex<u32>,
}

fn verify(secret: &str, headers: &HeaderMap, body: &str) -> Option<String> {
    let id = headers.get("webhook-id")?.to_str().ok()?;
    let ts = headers.get("webhook-timestamp")?.to_str().ok()?;
    let sig = headers.get("webhook-signature")?.to_str().ok()?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_")?)
        .ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    // Standard Webhooks: any of the space-separated signatures may match (secret rotation).
    sig.split(' ').any(|s| s == expected).then(|| id.to_owned())
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let secret = r.secret.lock().unwrap().clone();
    let Some(id) = verify(&secret, &headers, &body) else {
        *r.bad_signatures.lock().unwrap() += 1;
        return StatusCode::UNAUTHORIZED;
    };
    let n = {
        let mut attempts = r.attempts.lock().unwrap();
        let n = attempts.entry(id.clone()).or_default();
        *n += 1;
        *n
    };
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    if r.flaky && n == 1 {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if r.flaky && n == 2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        return StatusCode::NO_CONTENT;
    }
    r.accepted.lock().unwrap().push(Delivery { id, body });
    StatusCode::NO_CONTENT
}

async fn start_receiver(
    addr: SocketAddr,
    receiver: Arc<Receiver>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..300 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(http: SocketAddr, token: &str, unique_id: &str) -> Ws {
    let url = format!(
        "ws://{http}/v3/?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={unique_id}"
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade")
        .0
}

async fn participant(
    control: &Control,
    account: &AccountId,
    hook: &str,
    tag: Option<&str>,
) -> (String, String) {
    let (p, token) = control
        .create_participant(
            account,
            NewParticipant {
                callback_url: Some(CallbackUrl::parse(hook).expect("url")),
                tag: tag.map(|t| Tag::parse(t).expect("tag")),
                ..Default::default()
            },
        )
        .await
        .expect("participant");
    (p.id.to_string(), token)
}

fn by_participant(accepted: &[Delivery]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for d in accepted {
        let v: Value = serde_json::from_str(&d.body).expect("JSON body");
        out.entry(
            v["participantId"]
                .as_str()
                .expect("participantId")
                .to_owned(),
        )
        .or_default()
        .push(v);
    }
    out
}

#[tokio::test]
async fn events_arrive_signed_once_each_in_order_despite_errors_and_timeouts() {
    let receiver = Arc::new(Receiver {
        flaky: true,
        ..Default::default()
    });
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.webhooks.webhook_first_retry_ms = 50;
    config.webhooks.webhook_attempt_timeout = Duration::from_millis(500);
    let app = App::build(&config).await.expect("build app");
    let (http, control) = (app.http_addr(), app.control().clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let account = AccountId::parse("hooks").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    assert!(creds.webhook_secret.starts_with("whsec_"));
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();

    // A leaves (onConnect, onLeave); B's connection is lost (onConnect, onDisconnect); C has
    // no callbackUrl and raises nothing.
    let (a, token_a) = participant(&control, &account, &hook, Some("caller")).await;
    let (b, token_b) = participant(&control, &account, &hook, None).await;
    let (_, token_c) = control
        .create_participant(&account, NewParticipant::default())
        .await
        .expect("participant");
    let mut ws_a = connect(http, &token_a, "dev-a").await;
    let ws_b = connect(http, &token_b, "dev-b").await;
    let ws_c = connect(http, &token_c, "dev-c").await;
    ws_a.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":"1","method":"leave","params":{}}"#.into(),
    ))
    .await
    .expect("leave");
    drop(ws_b);
    drop(ws_c);

    wait_for("four deliveries", || {
        receiver.accepted.lock().unwrap().len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = receiver.accepted.lock().unwrap().clone();
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    assert_eq!(accepted.len(), 4, "{accepted:?}");
    let mut ids: Vec<&str> = accepted.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "each event once");
    for (id, n) in receiver.attempts.lock().unwrap().iter() {
        assert_eq!(
            *n, 3,
            "{id}: a 500, a timeout, then the acknowledged attempt"
        );
    }
    let events = by_participant(&accepted);
    assert_eq!(events.len(), 2, "{events:?}");
    let a_events = &events[&a];
    assert_eq!(a_events[0]["event"], "onConnect");
    assert_eq!(a_events[1]["event"], "onLeave");
    for (v, name) in a_events.iter().zip(["onConnect", "onLeave"]) {
        let ts = v["timestamp"].as_str().expect("timestamp is a string");
        assert!(ts.parse::<u64>().is_ok(), "{ts}");
        let exact = format!(
            r#"{{"event":"{name}","timestamp":"{ts}","participantId":"{a}","deviceId":"dev-a","tag":"caller"}}"#
        );
        let body = accepted
            .iter()
            .find(|d| serde_json::from_str::<Value>(&d.body).unwrap() == *v)
            .unwrap();
        assert_eq!(body.body, exact);
    }
    let b_events: Vec<&str> = events[&b]
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(b_events, ["onConnect", "onDisconnect"]);
    assert!(events[&b][0].get("tag").is_none(), "no tag: omitted");

    // The delivery log shows every attempt.
    let log = control
        .delivery_log(&account, a.parse().unwrap(), 100)
        .await
        .expect("log");
    assert_eq!(log.len(), 6, "{log:?}");
    assert_eq!(log.iter().filter(|l| l.status == Some(500)).count(), 2);
    assert_eq!(log.iter().filter(|l| l.error.is_some()).count(), 2);
    assert_eq!(log.iter().filter(|l| l.status == Some(204)).count(), 2);
}

/// Starts the app on a fresh database with `allowed` networks for webhooks (and `private`:
/// every address); returns its HTTP address, control, and the stop handle.
async fn app_with_destinations(
    allowed: &[&str],
    private: bool,
) -> (SocketAddr, Control, tokio::sync::oneshot::Sender<()>) {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.webhooks.webhook_allow_network = allowed
        .iter()
        .map(|n| n.parse().expect("network"))
        .collect();
    config.webhooks.webhook_allow_private = private;
    config.webhooks.webhook_first_retry_ms = 50;
    let app = App::build(&config).await.expect("build app");
    let (http, control) = (app.http_addr(), app.control().clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    (http, control, stop)
}

/// `POST …/participants` with `callbackUrl`: the status and the body.
async fn create_with_callback(
    http: SocketAddr,
    creds: &patchbay::control::NewCredentials,
    callback: &str,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "http://{http}/v1/accounts/{}/participants",
            creds.account
        ))
        .basic_auth(&creds.username, Some(&creds.password))
        .json(&serde_json::json!({"callbackUrl": callback}))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

/// The delivery log of `participant` once it has at least one attempt.
async fn first_attempts(
    control: &Control,
    account: &AccountId,
    participant: &str,
) -> Vec<patchbay::control::DeliveryAttempt> {
    for _ in 0..300 {
        let log = control
            .delivery_log(account, participant.parse().expect("id"), 10)
            .await
            .expect("log");
        if !log.is_empty() {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no delivery attempt for {participant}");
}

/// Answers every POST with a redirect to `to`.
async fn start_redirector(addr: &str, to: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind redirector");
    let local = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let to = to.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    local
}

/// Issue 22: a tenant cannot make the server POST into the server's own network. With only
/// 127.0.0.2 allowed, 28 spellings of loopback, private, link-local, multicast and other
/// special addresses, and URLs with credentials, are refused with 400 when they are set;
/// host names that resolve to loopback are refused at delivery (one attempt, logged as
/// refused, saying nothing of what listens); a redirect from an allowed receiver to loopback
/// is not followed. Nothing reaches the listener on 127.0.0.1. Then `--webhook-allow-private`
/// lets a delivery there through.
#[tokio::test]
async fn deliveries_to_addresses_that_are_not_public_are_refused() {
    let receiver = Arc::new(Receiver::default());
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let port = hook_addr.port();
    let (http, control, _stop) = app_with_destinations(&["127.0.0.2/32"], false).await;
    let account = AccountId::parse("tenant").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();

    let at_creation: Vec<(String, &str)> = [
        ("http://127.0.0.1:{P}/hook", "not a public address"),
        ("http://127.1:{P}/hook", "not a public address"),
        ("http://127.0.0.9:{P}/hook", "not a public address"),
        ("http://2130706433:{P}/hook", "not a public address"),
        ("http://0x7f000001:{P}/hook", "not a public address"),
        ("http://0177.0.0.1:{P}/hook", "not a public address"),
        ("http://0x7f.0.0.1:{P}/hook", "not a public address"),
        ("http://[::1]:{P}/hook", "not a public address"),
        ("http://[::ffff:127.0.0.1]:{P}/hook", "not a public address"),
        ("http://[::ffff:7f00:1]:{P}/hook", "not a public address"),
        ("http://[64:ff9b::7f00:1]:{P}/hook", "not a public address"),
        ("http://[2002:7f00:1::1]:{P}/hook", "not a public address"),
        ("http://0.0.0.0:{P}/hook", "not a public address"),
        ("http://[::]:{P}/hook", "not a public address"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "not a public address",
        ),
        ("http://[fe80::1]/hook", "not a public address"),
        ("http://10.0.0.1/hook", "not a public address"),
        ("http://172.16.5.4/hook", "not a public address"),
        ("http://192.168.0.1/hook", "not a public address"),
        ("http://100.64.0.1/hook", "not a public address"),
        ("http://[fd00::1]/hook", "not a public address"),
        ("http://224.0.0.1/hook", "not a public address"),
        ("http://[ff02::1]/hook", "not a public address"),
        ("http://255.255.255.255/hook", "not a public address"),
        ("http://198.18.0.1/hook", "not a public address"),
        ("http://user:pass@127.0.0.2:{P}/hook", "credentials"),
        ("https://user@hooks.example.com/hook", "credentials"),
        ("https://:secret@hooks.example.com/hook", "credentials"),
    ]
    .into_iter()
    .map(|(url, why)| (url.replace("{P}", &port.to_string()), why))
    .collect();
    assert!(at_creation.len() >= 25);
    for (url, why) in &at_creation {
        let (status, body) = create_with_callback(http, &creds, url).await;
        assert_eq!(status, 400, "{url}: {body}");
        let message = body.to_string();
        assert!(
            message.contains("callbackUrl") && message.contains(why),
            "{url}: {body}"
        );
    }

    // Host names are resolved at delivery; a redirect to loopback is not followed.
    let redirector = start_redirector("127.0.0.2:0", format!("http://127.0.0.1:{port}/hook")).await;
    let at_delivery = [
        (
            format!("http://localhost:{port}/hook"),
            Some("refused: localhost resolves to no allowed address"),
        ),
        (
            format!("http://LOCALHOST:{port}/hook"),
            Some("refused: localhost resolves to no allowed address"),
        ),
        (format!("http://{redirector}/hook"), None),
    ];
    let mut devices = Vec::new();
    for (i, (url, why)) in at_delivery.iter().enumerate() {
        let (status, body) = create_with_callback(http, &creds, url).await;
        assert_eq!(status, 200, "{url}: {body}");
        let (id, token) = (
            body["participant"]["id"].as_str().expect("id").to_owned(),
            body["token"].as_str().expect("token").to_owned(),
        );
        devices.push(connect(http, &token, &format!("dev-{i}")).await);
        let log = first_attempts(&control, &account, &id).await;
        match why {
            Some(why) => {
                assert_eq!(log.len(), 1, "refused once, not retried: {log:?}");
                let error = log[0].error.as_deref().unwrap_or_default();
                assert!(error.starts_with(why), "{url}: {error}");
                assert_eq!(log[0].status, None);
            }
            None => assert_eq!(
                log[0].status,
                Some(307),
                "{url}: the redirect is the answer"
            ),
        }
    }
    assert!(receiver.accepted.lock().unwrap().is_empty());
    assert!(
        receiver.attempts.lock().unwrap().is_empty(),
        "no request reached the receiver"
    );
    assert_eq!(
        *receiver.bad_signatures.lock().unwrap(),
        0,
        "no request reached the receiver"
    );
    drop(devices);

    // The operator's switch lets a delivery to loopback through.
    let (http, control, _stop) = app_with_destinations(&[], true).await;
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();
    let (status, body) =
        create_with_callback(http, &creds, &format!("http://127.0.0.1:{port}/hook")).await;
    assert_eq!(status, 200, "{body}");
    let _device = connect(http, body["token"].as_str().expect("token"), "dev-ok").await;
    wait_for("the allowed delivery", || {
        !receiver.accepted.lock().unwrap().is_empty()
    })
    .await;
}

/// Issue 22: an account's webhook secret is rotated with a grace: deliveries verify with the
/// new secret and with the old one, so a receiver can switch without losing an event. A
/// rotation without grace ends the old secret at once.
#[tokio::test]
async fn a_rotated_webhook_secret_signs_with_both_secrets_during_its_grace() {
    let receiver = Arc::new(Receiver::default());
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let (http, control, _stop) = app_with_destinations(&["127.0.0.1/32"], false).await;
    let account = AccountId::parse("rotating").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    let old = creds.webhook_secret.clone();
    let new = control
        .rotate_webhook_secret(&account, Duration::from_secs(3600))
        .await
        .expect("rotate");
    assert!(new.starts_with("whsec_") && new != old);

    // A receiver still on the old secret accepts the delivery, and so does one on the new.
    *receiver.secret.lock().unwrap() = old.clone();
    let (_, token) = participant(&control, &account, &hook, None).await;
    let _a = connect(http, &token, "dev-a").await;
    wait_for("a delivery verified with the old secret", || {
        receiver.accepted.lock().unwrap().len() == 1
    })
    .await;
    *receiver.secret.lock().unwrap() = new.clone();
    let (_, token) = participant(&control, &account, &hook, None).await;
    let _b = connect(http, &token, "dev-b").await;
    wait_for("a delivery verified with the new secret", || {
        receiver.accepted.lock().unwrap().len() == 2
    })
    .await;

    // Without grace the old secret signs nothing more.
    let newest = control
        .rotate_webhook_secret(&account, Duration::ZERO)
        .await
        .expect("rotate");
    *receiver.secret.lock().unwrap() = new;
    let (_, token) = participant(&control, &account, &hook, None).await;
    let _c = connect(http, &token, "dev-c").await;
    wait_for("a delivery the previous secret does not verify", || {
        *receiver.bad_signatures.lock().unwrap() >= 1
    })
    .await;
    *receiver.secret.lock().unwrap() = newest;
    wait_for("the retry, verified with the newest secret", || {
        receiver.accepted.lock().unwrap().len() == 3
    })
    .await;
}

/// Issue 10 item 5: a session past its age is removed, and its members' devices are
/// disconnected (close 1000 "session expired") and reported with onLeave.
#[tokio::test]
async fn an_expired_session_disconnects_its_members_with_on_leave() {
    use futures_util::StreamExt;
    let receiver = Arc::new(Receiver::default());
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let config = ServeConfig::for_database(&sqlite_url());
    let app = App::build(&config).await.expect("build app");
    let (http, control) = (app.http_addr(), app.control().clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let account = AccountId::parse("expiry").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();
    let (a, token) = participant(&control, &account, &hook, None).await;
    let session = control
        .create_session(&account, None)
        .await
        .expect("session");
    control
        .add_member(&account, session.id, a.parse().unwrap(), None)
        .await
        .expect("member");
    let mut ws = connect(http, &token, "dev-x").await;
    wait_for("onConnect", || {
        !receiver.accepted.lock().unwrap().is_empty()
    })
    .await;

    // Every session counts as old with a zero age: this one expires.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1000;
    let expired = control
        .expire_sessions(Duration::ZERO, now_ms)
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "session expired");
    wait_for("onLeave", || receiver.accepted.lock().unwrap().len() >= 2).await;
    let events: Vec<String> = by_participant(&receiver.accepted.lock().unwrap().clone())[&a]
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["onConnect", "onLeave"]);
    assert!(
        control.session(&account, session.id).await.is_err(),
        "the session is gone"
    );
}

/// The events of `participant` in the outbox of the SQLite database at `db`, in order.
async fn outbox_events(db: &str, participant: &str) -> Vec<String> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(db)
        .await
        .expect("open the database");
    sqlx::query_scalar("SELECT event FROM webhook_outbox WHERE participant_id = ? ORDER BY seq")
        .bind(participant)
        .fetch_all(&mut conn)
        .await
        .expect("read the outbox")
}

/// Deleting a connected phone's participant hangs up its call; its `onDisconnect` and the
/// `onCallEnded` after it still reach its backend (the participant is gone from the store by
/// then: its target is remembered past the disconnection). Both are in the outbox when the
/// deletion is acknowledged, although the phone has not answered the BYE yet (issue 22), and
/// the call's end, when the phone does answer, records nothing twice.
#[tokio::test]
async fn a_deleted_phone_participant_still_gets_its_last_events() {
    let receiver = Arc::new(Receiver::default());
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let db = sqlite_url();
    let app = App::build(&ServeConfig::for_database(&db))
        .await
        .expect("build app");
    let (sip, control) = (app.sip_addr(), app.control().clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let account = AccountId::parse("deleted").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();
    let (p, token) = participant(&control, &account, &hook, Some("caller")).await;
    let session = control
        .create_session(&account, None)
        .await
        .expect("session");
    control
        .add_member(&account, session.id, p.parse().unwrap(), None)
        .await
        .expect("member");
    let phone = patchbay_testkit::phone_ua::dial(
        sip,
        &patchbay_testkit::phone_ua::Dial::with_token(&token),
    )
    .await
    .expect("answered");
    // The call is answered only once its events are in the outbox (its stream's may follow).
    let recorded = outbox_events(&db, &p).await;
    assert_eq!(
        recorded[..2.min(recorded.len())],
        ["onConnect", "onCallAnswered"],
        "recorded before the 200 OK: {recorded:?}"
    );
    phone.play_tone(1000.0);
    phone.answer_bye(false);
    control
        .delete_participant(&account, p.parse().unwrap())
        .await
        .expect("delete");
    let ends = ["onDisconnect", "onCallEnded"];
    let recorded = outbox_events(&db, &p).await;
    assert!(
        recorded
            .iter()
            .filter(|e| !e.starts_with("onStream"))
            .eq(["onConnect", "onCallAnswered"].iter().chain(&ends)),
        "the ends are recorded when the deletion is acknowledged: {recorded:?}"
    );
    wait_for("the server's BYE", || phone.bye_received()).await;
    // The phone answers a retransmission of the BYE: the call ends on the server. Once the
    // server has answered an OPTIONS sent after that answer, it has handled it, and once
    // every event raised is settled, a second end would be in the outbox.
    phone.answer_bye(true);
    wait_for("a retransmitted BYE answered", || {
        phone
            .requests_received()
            .iter()
            .filter(|m| *m == "BYE")
            .count()
            >= 2
    })
    .await;
    assert_eq!(phone.options().await, 200);
    wait_for("every event settled", || control.events_unsettled() == 0).await;
    let recorded = outbox_events(&db, &p).await;
    for end in ends {
        assert_eq!(
            recorded.iter().filter(|e| *e == end).count(),
            1,
            "{end} once: {recorded:?}"
        );
    }
    wait_for("onCallEnded", || {
        receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .any(|d| d.body.contains("onCallEnded"))
    })
    .await;
    let events: Vec<String> = by_participant(&receiver.accepted.lock().unwrap().clone())[&p]
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .filter(|e| !e.starts_with("onStream"))
        .collect();
    assert_eq!(
        events,
        ["onConnect", "onCallAnswered", "onDisconnect", "onCallEnded"]
    );
}

// ---- kill -9 ------------------------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_patchbay");

struct Server {
    child: Child,
    http: String,
}

impl Server {
    fn start(db: &str) -> Server {
        use std::io::{BufRead, BufReader};
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
                "--database-url",
                db,
                "--webhook-first-retry-ms",
                "50",
                "--webhook-attempt-timeout",
                "1",
                "--webhook-allow-network",
                "127.0.0.1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn patchbay");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let http = loop {
            let line = lines.next().expect("server exited").expect("stdout");
            if let Some(url) = line.strip_prefix("patchbay listening on http://") {
                break url.trim().to_owned();
            }
        };
        Server { child, http }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// An account made with `patchbay account create ID --json` on `db`: its API username and
/// password and its webhook secret.
struct CliAccount {
    id: String,
    user: String,
    pass: String,
    secret: String,
}

fn cli_account(db: &str, id: &str) -> CliAccount {
    let out = Command::new(BIN)
        .args(["account", "create", id, "--json", "--database-url", db])
        .output()
        .expect("account create");
    assert!(out.status.success());
    let creds: Value = serde_json::from_slice(&out.stdout).expect("json");
    let field = |name: &str| creds[name].as_str().expect(name).to_owned();
    CliAccount {
        id: id.to_owned(),
        user: field("username"),
        pass: field("password"),
        secret: field("webhookSecret"),
    }
}

/// A participant created over REST with `callbackUrl` `hook`: its id and token.
async fn rest_participant(server: &Server, account: &CliAccount, hook: &str) -> (String, String) {
    let v: Value = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/accounts/{}/participants",
            server.http, account.id
        ))
        .basic_auth(&account.user, Some(&account.pass))
        .json(&serde_json::json!({"callbackUrl": hook}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    (
        v["participant"]["id"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}
#[tokio::test]
async fn pending_events_survive_kill_9_and_are_delivered_after_restart() {
    let db = sqlite_url();
    let account = cli_account(&db, "k9");
    // The receiver's address is reserved, then closed: it is down while events are emitted.
    let hook_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hook = format!("http://{hook_addr}/hook");

    let server = Server::start(&db);
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(rest_participant(&server, &account, &hook).await.1);
    }
    let addr: SocketAddr = server.http.parse().unwrap();
    for (i, token) in tokens.iter().enumerate() {
        let ws = connect(addr, token, &format!("d{i}")).await;
        drop(ws);
    }
    // Give the recorder time to write the six events; the receiver refuses connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(server); // kill -9

    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (_, _hook) = start_receiver(hook_addr, receiver.clone()).await;
    let _server = Server::start(&db);
    wait_for("six deliveries", || {
        receiver.accepted.lock().unwrap().len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = receiver.accepted.lock().unwrap().clone();
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    let mut ids: Vec<&str> = accepted.iter().map(|d| d.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "six distinct events, none lost: {accepted:?}");
    for (p, events) in by_participant(&accepted) {
        let names: Vec<&str> = events
            .iter()
            .map(|v| v["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["onConnect", "onDisconnect"], "{p}");
    }
}

/// `kill -9` with two devices connected: the one whose SDK reconnects to the next process
/// (same `uniqueId`) resumes its call and its backend hears nothing more (no second
/// `onConnect`, no `onDisconnect`); the one that does not come back gets exactly one
/// `onDisconnect`, from the next process, once the reconnect grace has passed, even when that
/// process starts long after the crash.
#[tokio::test]
async fn a_dead_process_s_devices_that_do_not_come_back_get_one_on_disconnect() {
    let db = sqlite_url();
    let account = cli_account(&db, "k9r");
    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");

    let server = Server::start(&db);
    let mut ids = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (id, token) = rest_participant(&server, &account, &hook).await;
        ids.push(id);
        tokens.push(token);
    }
    let addr: SocketAddr = server.http.parse().unwrap();
    let comes_back = connect(addr, &tokens[0], "back").await;
    let stays_away = connect(addr, &tokens[1], "away").await;
    wait_for("two onConnect", || {
        receiver.accepted.lock().unwrap().len() >= 2
    })
    .await;
    drop(server); // kill -9
    drop((comes_back, stays_away));
    // The next process starts long after the crash (its last beat five minutes ago): what the
    // dead process held is still accounted for.
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&db).await.expect("open");
        sqlx::query("UPDATE server_instances SET seen_at = seen_at - 300000")
            .execute(&mut conn)
            .await
            .expect("age the dead process");
    }

    let server = Server::start(&db);
    let addr: SocketAddr = server.http.parse().unwrap();
    let _back = connect(addr, &tokens[0], "back").await;
    // The next process accounts for the dead one's devices after the reconnect grace.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while receiver.accepted.lock().unwrap().len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no onDisconnect for the device that did not come back: {:?}",
            receiver.accepted.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything spurious would follow at once; give it the time to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = by_participant(&receiver.accepted.lock().unwrap().clone());
    let names = |p: &str| -> Vec<String> {
        events
            .get(p)
            .map(|v| {
                v.iter()
                    .map(|e| e["event"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        names(&ids[0]),
        ["onConnect"],
        "the device that came back resumed its call: nothing more"
    );
    assert_eq!(
        names(&ids[1]),
        ["onConnect", "onDisconnect"],
        "the device that did not come back: one onDisconnect"
    );
    drop(server);
}

/// Issue 22: 8 clients connect and leave devices as fast as they can for 10 s; the server is
/// killed (`kill -9`) while they do, and started again on the same database. Every connect
/// and every leave the server acknowledged (the connection answered a request; the `leave`
/// got its reply) has its `onConnect` / `onLeave` delivered after the restart: an event is in
/// the outbox before its action is acknowledged. Duplicates carry the same `webhook-id`.
async fn acknowledged_events_survive_kill_9(db: String) {
    let account = cli_account(&db, &format!("ack{}", rand::random::<u16>()));
    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let server = Server::start(&db);
    let addr: SocketAddr = server.http.parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(rest_participant(&server, &account, &hook).await);
    }
    // Acknowledged (participant, deviceId) pairs.
    let connects = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let leaves = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for (c, (participant, token)) in clients.into_iter().enumerate() {
        let (connects, leaves) = (connects.clone(), leaves.clone());
        tasks.spawn(async move {
            for n in 0.. {
                let device = format!("c{c}-{n}");
                let url = format!(
                    "ws://{addr}/v3/?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={device}"
                );
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                    return;
                };
                // Any reply means the connection was accepted: its connect is acknowledged.
                let probe = r#"{"jsonrpc":"2.0","id":1,"method":"nothing"}"#;
                if ws.send(Message::Text(probe.into())).await.is_err() || !replied(&mut ws, 1).await {
                    return;
                }
                connects.lock().unwrap().push((participant.clone(), device.clone()));
                let leave = r#"{"jsonrpc":"2.0","id":2,"method":"leave","params":{}}"#;
                if ws.send(Message::Text(leave.into())).await.is_err() || !replied(&mut ws, 2).await {
                    return;
                }
                leaves.lock().unwrap().push((participant.clone(), device));
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(server); // kill -9, while the clients churn
    while tasks.join_next().await.is_some() {}
    let connects = connects.lock().unwrap().clone();
    let leaves = leaves.lock().unwrap().clone();
    assert!(
        connects.len() >= 8 && !leaves.is_empty(),
        "the clients churned: {} connects, {} leaves",
        connects.len(),
        leaves.len()
    );

    let _server = Server::start(&db);
    let delivered = |event: &str| -> std::collections::HashSet<(String, String)> {
        receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(&d.body).ok())
            .filter(|v| v["event"] == event)
            .map(|v| {
                (
                    v["participantId"].as_str().unwrap_or_default().to_owned(),
                    v["deviceId"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let missing = || {
        let (on_connect, on_leave) = (delivered("onConnect"), delivered("onLeave"));
        let connects: Vec<_> = connects
            .iter()
            .filter(|c| !on_connect.contains(c))
            .cloned()
            .collect();
        let leaves: Vec<_> = leaves
            .iter()
            .filter(|l| !on_leave.contains(l))
            .cloned()
            .collect();
        (connects, leaves)
    };
    // A bound against hanging, not a timing claim: the backlog of a 10 s churn drains at the
    // delivery rate (slowest on PostgreSQL in a debug build on a loaded machine).
    for _ in 0..3000 {
        let (c, l) = missing();
        if c.is_empty() && l.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (c, l) = missing();
    assert!(
        c.is_empty() && l.is_empty(),
        "acknowledged but not delivered: connects {c:?}, leaves {l:?} (of {} and {})",
        connects.len(),
        leaves.len()
    );
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);
    // Repeats of one event carry its webhook-id: no event is delivered under two ids.
    let accepted = receiver.accepted.lock().unwrap().clone();
    let mut by_id: HashMap<String, String> = HashMap::new();
    for d in &accepted {
        assert_eq!(
            by_id.entry(d.id.clone()).or_insert_with(|| d.body.clone()),
            &d.body
        );
    }
    let mut bodies: Vec<&String> = by_id.values().collect();
    let all = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), all, "one id per event");
    println!(
        "acknowledged before kill -9: {} connects, {} leaves; all delivered after the restart",
        connects.len(),
        leaves.len()
    );
}

/// Issue 20: two serving processes on one PostgreSQL database (each with its delivery
/// worker reading the same outbox) deliver each webhook once: a process claims an event for
/// its attempt, and the other does not take it meanwhile. Devices connect and leave through
/// both; the receiver takes 300 ms to answer, so without claims the other process (which
/// reads the outbox every 200 ms) sends most events a second time.
#[tokio::test]
async fn two_processes_on_one_database_deliver_each_webhook_once() {
    let db = patchbay_testkit::db::fresh_postgres_url();
    let account = cli_account(&db, "pair");
    let receiver = Arc::new(Receiver {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let servers = [Server::start(&db), Server::start(&db)];
    let mut expected = 0;
    for (n, server) in servers.iter().enumerate() {
        let addr: SocketAddr = server.http.parse().unwrap();
        for p in 0..3 {
            let (_, token) = rest_participant(server, &account, &hook).await;
            for round in 0..2 {
                let mut ws = connect(addr, &token, &format!("s{n}-p{p}-r{round}")).await;
                let leave = r#"{"jsonrpc":"2.0","id":1,"method":"leave","params":{}}"#;
                ws.send(Message::Text(leave.into())).await.expect("leave");
                assert!(replied(&mut ws, 1).await, "leave answered");
                expected += 2; // onConnect, onLeave
            }
        }
    }
    wait_for("every event accepted", || {
        let ids: std::collections::HashSet<String> = receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.id.clone())
            .collect();
        ids.len() >= expected
    })
    .await;
    // Every event is delivered (nothing pending); then both processes stop, so no attempt
    // can start after the count below, and one already sent has arrived.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db).await.expect("connect");
        for _ in 0..300 {
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox WHERE state = 'pending'")
                    .fetch_one(&mut conn)
                    .await
                    .expect("pending");
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(servers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = receiver.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), expected, "every event arrived");
    let repeated: Vec<_> = attempts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} of {expected} events were sent more than once: {repeated:?}",
        repeated.len()
    );
}

/// Issue 20: a process that dies while others run (`kill -9`) has its devices accounted for
/// by the processes alive: the device's `onDisconnect` is written once (two processes alive
/// race to claim the dead one) and delivered, without a process starting after the death.
#[tokio::test]
async fn a_process_that_dies_while_others_run_has_its_devices_disconnected_once() {
    use sqlx::Connection;
    let db = patchbay_testkit::db::fresh_postgres_url();
    let account = cli_account(&db, "loss");
    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let alive = [Server::start(&db), Server::start(&db)];
    let dying = Server::start(&db);
    let (participant, token) = rest_participant(&dying, &account, &hook).await;
    let mut ws = connect(dying.http.parse().unwrap(), &token, "lost").await;
    let probe = r#"{"jsonrpc":"2.0","id":1,"method":"nothing"}"#;
    ws.send(Message::Text(probe.into())).await.expect("probe");
    assert!(replied(&mut ws, 1).await, "connected");
    let events = |name: &str| {
        receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.body.contains(&participant) && d.body.contains(name))
            .count()
    };
    wait_for("onConnect", || events("\"onConnect\"") == 1).await;
    drop(dying); // kill -9
    drop(ws);

    // Bounded against hanging, not a timing claim: the processes alive look for dead ones
    // 30 s after their start, then every 2 s; a process is dead after 8 s without a beat.
    let mut conn = sqlx::PgConnection::connect(&db).await.expect("connect");
    let mut reaped = false;
    for _ in 0..900 {
        let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM server_instances")
            .fetch_one(&mut conn)
            .await
            .expect("instances");
        if instances == 2 && events("\"onDisconnect\"") >= 1 {
            reaped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reaped, "the dead process was accounted for");
    let written: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM webhook_outbox WHERE participant_id = $1 ORDER BY seq",
    )
    .bind(&participant)
    .fetch_all(&mut conn)
    .await
    .expect("outbox");
    assert_eq!(written, ["onConnect", "onDisconnect"], "once each");
    drop(alive);
}

/// Whether the reply to request `id` arrives (notifications before it are skipped).
async fn replied(ws: &mut Ws, id: u64) -> bool {
    use futures_util::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                    continue;
                };
                if v["id"] == serde_json::json!(id) {
                    return true;
                }
            }
            Ok(Some(Ok(_))) => continue,
            _ => return false,
        }
    }
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9_on_sqlite() {
    acknowledged_events_survive_kill_9(sqlite_url()).await;
}

#[tokio::test]
async fn acknowledged_events_survive_kill_9_on_postgres() {
    acknowledged_events_survive_kill_9(patchbay_testkit::db::postgres_url()).await;
}

/// Receivers that accept a connection and never answer: counts of connections accepted and of
/// connections the server closed (an attempt that timed out).
#[derive(Default)]
struct Hanging {
    accepted: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
}

async fn start_hanging(hanging: Arc<Hanging>) -> SocketAddr {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind hanging receiver");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            hanging.accepted.fetch_add(1, Ordering::SeqCst);
            let hanging = hanging.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                hanging.closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    addr
}

/// Issue 22: account A has 300 receivers that accept and never answer, and a backlog of events
/// for them; account B's event still goes out at once, while every one of A's attempts is
/// still hanging (none has timed out yet: the attempt timeout is a minute), and A leaves a
/// share of the places free. Before the per-account share, A's events filled every place and
/// B's waited for A's attempts to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_hanging_receivers_does_not_delay_another_account() {
    use std::sync::atomic::Ordering;
    const HANGING: usize = 300;
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.webhooks.webhook_attempt_timeout = Duration::from_secs(60);
    let share = usize::from(config.webhooks.webhook_account_concurrency);
    let total = usize::from(config.webhooks.webhook_concurrency);
    let app = App::build(&config).await.expect("build app");
    let (http, control) = (app.http_addr(), app.control().clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let (a, b) = (
        AccountId::parse("hangs").unwrap(),
        AccountId::parse("fine").unwrap(),
    );
    control.create_account(a.clone()).await.expect("account a");
    let creds_b = control.create_account(b.clone()).await.expect("account b");

    let hanging = Arc::new(Hanging::default());
    for i in 0..HANGING {
        let addr = start_hanging(hanging.clone()).await;
        let (_, token) = participant(&control, &a, &format!("http://{addr}/hook"), None).await;
        drop(connect(http, &token, &format!("a-{i}")).await);
    }
    wait_for("A's attempts to start", || {
        hanging.accepted.load(Ordering::SeqCst) >= total - share
    })
    .await;

    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = creds_b.webhook_secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let (_, token) = participant(&control, &b, &format!("http://{hook_addr}/hook"), None).await;
    let began = tokio::time::Instant::now();
    let _ws = connect(http, &token, "b").await;
    wait_for("B's onConnect", || {
        !receiver.accepted.lock().unwrap().is_empty()
    })
    .await;
    let took = began.elapsed();
    let (accepted, closed) = (
        hanging.accepted.load(Ordering::SeqCst),
        hanging.closed.load(Ordering::SeqCst),
    );
    println!("B's onConnect arrived {took:?} after its connect; A: {accepted} attempts hanging, {closed} ended");
    assert_eq!(
        closed, 0,
        "B's event waited until one of A's attempts timed out"
    );
    assert!(
        accepted <= total - share,
        "A has {accepted} attempts in flight: it left less than a share ({share}) of {total} free"
    );
}

/// Issue 22: the optional participant expiry deletes a participant as `DELETE` does: its
/// connected device is closed and its backend gets `onDisconnect` (as for a deletion through
/// the REST API); the participant is gone.
#[tokio::test]
async fn an_expired_participant_is_deleted_and_its_device_leaves() {
    use futures_util::StreamExt;
    let receiver = Arc::new(Receiver::default());
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let config = ServeConfig::for_database(&sqlite_url());
    let app = App::build(&config).await.expect("build app");
    let (http, control) = (app.http_addr(), app.control().clone());
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let _server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let account = AccountId::parse("aging").unwrap();
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    *receiver.secret.lock().unwrap() = creds.webhook_secret.clone();
    let (a, token) = participant(&control, &account, &hook, None).await;
    let mut ws = connect(http, &token, "dev-old").await;
    wait_for("onConnect", || {
        !receiver.accepted.lock().unwrap().is_empty()
    })
    .await;
    // With an age of zero and the clock a second ahead, every participant is old.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1000;
    let expired = control
        .expire_participants(Duration::ZERO, now_ms)
        .await
        .expect("expire");
    assert_eq!(expired, 1);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(_))) | None) => break,
            Ok(Some(Ok(_))) => continue,
            other => panic!("the device was not closed: {other:?}"),
        }
    }
    wait_for("onDisconnect", || {
        receiver.accepted.lock().unwrap().len() >= 2
    })
    .await;
    let events: Vec<String> = by_participant(&receiver.accepted.lock().unwrap().clone())[&a]
        .iter()
        .map(|v| v["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["onConnect", "onDisconnect"]);
    assert!(
        control
            .participant(&account, a.parse().unwrap())
            .await
            .is_err(),
        "the participant is gone"
    );
}

/// Issue 20's fence: a process paused (`SIGSTOP`) past its lease is taken for dead by the
/// process alive, which writes its devices' ends. Resumed, the paused process writes nothing
/// with its stale registration: the end of a device whose client left during the pause is not
/// written a second time, the device still connected is closed 1013 without a second end, and
/// no live row of its old registration remains.
#[tokio::test]
async fn a_process_paused_past_its_lease_writes_nothing_when_resumed() {
    use sqlx::Connection;
    let db = patchbay_testkit::db::fresh_postgres_url();
    let account = cli_account(&db, "paused");
    let receiver = Arc::new(Receiver::default());
    *receiver.secret.lock().unwrap() = account.secret.clone();
    let (hook_addr, _hook) = start_receiver("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let hook = format!("http://{hook_addr}/hook");
    let _alive = Server::start(&db);
    let paused = Server::start(&db);
    let (left, left_token) = rest_participant(&paused, &account, &hook).await;
    let (stayed, stayed_token) = rest_participant(&paused, &account, &hook).await;
    let addr: SocketAddr = paused.http.parse().unwrap();
    let mut left_ws = connect(addr, &left_token, "left").await;
    let mut stayed_ws = connect(addr, &stayed_token, "stayed").await;
    let probe = r#"{"jsonrpc":"2.0","id":1,"method":"nothing"}"#;
    for ws in [&mut left_ws, &mut stayed_ws] {
        ws.send(Message::Text(probe.into())).await.expect("probe");
        assert!(replied(ws, 1).await, "connected");
    }
    let events = |participant: &str, name: &str| {
        receiver
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.body.contains(participant) && d.body.contains(name))
            .count()
    };
    wait_for("both onConnects", || {
        events(&left, "\"onConnect\"") == 1 && events(&stayed, "\"onConnect\"") == 1
    })
    .await;

    let pid = paused.child.id().to_string();
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    // The client of `left` goes while its process is paused: its end reaches the process
    // when it resumes.
    drop(left_ws);

    // The process alive takes the paused one for dead (bounded against hanging: it looks 30 s
    // after its start, then every 2 s; a process is dead after 8 s without a beat), writes
    // both devices' ends and removes its row.
    let mut conn = sqlx::PgConnection::connect(&db).await.expect("connect");
    let mut reaped = false;
    for _ in 0..900 {
        if instance_count(&mut conn).await == 1
            && events(&left, "\"onDisconnect\"") == 1
            && events(&stayed, "\"onDisconnect\"") == 1
        {
            reaped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reaped, "the paused process was taken for dead");

    signal("-CONT");
    // Resumed, it learns it was taken for dead: the device still connected is closed 1013.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        use futures_util::StreamExt;
        loop {
            match stayed_ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the resumed process closes its device");
    assert_eq!(
        closed,
        Some((1013, patchbay::control::TAKEN_FOR_DEAD.to_owned()))
    );
    drop(stayed_ws);
    // It registers anew (a new epoch) at its next beat.
    let mut registered = false;
    for _ in 0..300 {
        if instance_count(&mut conn).await == 2 {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "the resumed process registers again");
    // What it had raised before it knew, and what its closing raised, would be written within
    // moments of its resumption; give that time, then nothing of it may be there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for participant in [&left, &stayed] {
        let written: Vec<String> = sqlx::query_scalar(
            "SELECT event FROM webhook_outbox WHERE participant_id = $1 ORDER BY seq",
        )
        .bind(participant)
        .fetch_all(&mut conn)
        .await
        .expect("outbox");
        assert_eq!(written, ["onConnect", "onDisconnect"], "one end each");
    }
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM live_devices")
        .fetch_one(&mut conn)
        .await
        .expect("live rows");
    assert_eq!(rows, 0, "no live row of the old registration");
}

/// How many processes are registered on the database.
async fn instance_count(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM server_instances")
        .fetch_one(conn)
        .await
        .expect("instances")
}
