//! Reaching the server from outside, through real ports: several `--public-ip` addresses (IPv4
//! and IPv6) each become an ICE candidate and a device connects over each family (the media
//! socket on the dual-stack `[::]`); `GET …/participants/{p}/iceServers` answers TURN
//! credentials by the TURN REST convention, `[]` without TURN, 404 for an unknown participant.
//!
//! Against a real coturn (Debian package `coturn`, started by the tests on loopback):
//! `--public-ip auto` resolves through its STUN, and coturn's own client allocates a relay
//! with the credentials patchbay minted (and is refused with forged ones).
//!
//! Run with `cargo test --test reach`. The device is a str0m `Rtc` on a real UDP socket,
//! signalling over the real WebSocket like the browser SDK.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use patchbay::app::App;
use patchbay::config::ServeConfig;
use patchbay::control::{Control, NewParticipant};
use patchbay::domain::{AccountId, MediaKinds};
use patchbay::reach::PublicIp;
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::rtc::{builtin_channel, drain, receive};
use serde_json::{json, Value};
use str0m::change::SdpAnswer;
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A server built from `config`, running until dropped.
struct Server {
    http: SocketAddr,
    control: Control,
    account: AccountId,
    user: String,
    pass: String,
    media: Vec<Vec<SocketAddr>>,
    _stop: oneshot::Sender<()>,
}

async fn start(config: ServeConfig) -> Server {
    let app = App::build(&config).await.expect("build app");
    let http = app.http_addr();
    let control = app.control().clone();
    let media = app.addresses().media.clone();
    let account = AccountId::parse("reach").expect("id");
    let creds = control
        .create_account(account.clone())
        .await
        .expect("account");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    Server {
        http,
        control,
        account,
        user: creds.username,
        pass: creds.password,
        media,
        _stop: stop,
    }
}

fn config() -> ServeConfig {
    ServeConfig::for_database(&sqlite_url())
}

// ------------------------------------------------------------------------------------------------
// Several public addresses
// ------------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_public_ip_is_a_candidate_and_devices_connect_over_each_family() {
    let v4: IpAddr = "127.0.0.1".parse().expect("ip");
    let v6: IpAddr = "::1".parse().expect("ip");
    let mut config = config();
    config.media_listen = "[::]:0".parse().expect("addr");
    config.media_shards = Some(1);
    config.public_ip = vec![PublicIp::Ip(v4), PublicIp::Ip(v6)];
    let server = start(config).await;
    let port = server.media[0][0].port();
    assert_eq!(
        server.media,
        vec![vec![SocketAddr::new(v4, port), SocketAddr::new(v6, port)]]
    );
    for local in [v4, v6] {
        let answer = connect_device(&server, local).await;
        for ip in ["127.0.0.1", "::1"] {
            assert!(
                answer.contains(&format!(" {ip} {port} typ host")),
                "the answer offers {ip}:{port}: {answer}"
            );
        }
    }
}

#[tokio::test]
async fn a_public_ip_of_another_family_than_the_media_socket_is_refused() {
    let mut config = config();
    config.media_listen = "127.0.0.1:0".parse().expect("addr");
    config.public_ip = vec![PublicIp::Ip("2001:db8::7".parse().expect("ip"))];
    let err = App::build(&config)
        .await
        .err()
        .expect("an IPv6-only public address on an IPv4 socket is refused");
    let text = err.to_string();
    assert!(text.contains("--media-listen [::]"), "{text}");
}

/// Connects a device whose media socket is on `local` (port 0): the data-channel publish
/// offer over the WebSocket, then ICE and DTLS over real UDP until str0m says it is
/// connected. Returns the server's SDP answer.
async fn connect_device(server: &Server, local: IpAddr) -> String {
    let (_, token) = server
        .control
        .create_participant(
            &server.account,
            NewParticipant {
                publish_permissions: Some(MediaKinds::AUDIO),
                ..Default::default()
            },
        )
        .await
        .expect("participant");
    let url = format!(
        "ws://{}/v3?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId=u-{local}",
        server.http
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    let prefs = call(
        &mut ws,
        1,
        "setMediaPreferences",
        json!({"protocol": "WEBRTC"}),
    )
    .await;
    assert!(prefs.get("result").is_some(), "{prefs}");

    let socket = UdpSocket::bind(SocketAddr::new(local, 0))
        .await
        .expect("bind device socket");
    let me = socket.local_addr().expect("local addr");
    let start = Instant::now();
    let mut rtc = Rtc::builder().build(start);
    rtc.add_local_candidate(Candidate::host(me, "udp").expect("candidate"));
    rtc.handle_input(Input::Timeout(start)).expect("timeout");
    let mut api = rtc.sdp_api();
    api.add_channel_with_config(builtin_channel(0, "__heartbeat__"));
    api.add_channel_with_config(builtin_channel(1, "__diagnostics__"));
    let (offer, pending) = api.apply().expect("an offer");
    let params = json!({
        "sdpOffer": offer.to_sdp_string(),
        "mediaMetadata": {"mediaStreams": {}, "dataChannels": {
            "__heartbeat__": {"label": "__heartbeat__", "streamId": 0},
            "__diagnostics__": {"label": "__diagnostics__", "streamId": 1},
        }},
    });
    let reply = call(&mut ws, 2, "offerSdp", params).await;
    let sdp = reply["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("an answer: {reply}"))
        .to_owned();
    let answer = SdpAnswer::from_sdp_string(&sdp).expect("answer parses");
    rtc.sdp_api()
        .accept_answer(pending, answer)
        .expect("answer accepted");

    let deadline = start + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        assert!(now < deadline, "device on {local} did not connect");
        let mut events = Vec::new();
        let mut out = Vec::new();
        let (next, err) = drain(&mut rtc, now, |t| out.push(t), &mut events);
        assert!(err.is_none(), "{err:?}");
        for t in out {
            socket
                .send_to(&t.contents, t.destination)
                .await
                .expect("send");
        }
        if events.iter().any(|e| matches!(e, Event::Connected)) {
            return sdp;
        }
        let wait = next
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                // Whatever comes back comes from an address of our own family.
                assert_eq!(from.is_ipv4(), local.is_ipv4(), "answered from {from}");
                let _ = receive(&mut rtc, from, me, &buf[..n], Instant::now());
            }
            Ok(Err(e)) => panic!("receive: {e}"),
            Err(_) => {
                rtc.handle_input(Input::Timeout(Instant::now()))
                    .expect("timeout");
            }
        }
    }
}

async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                // Notifications (no id) are not the reply.
                if v.get("id").and_then(Value::as_u64) == Some(id) {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// iceServers
// ------------------------------------------------------------------------------------------------

/// `GET …/iceServers` for `participant` with the account's credentials.
async fn ice_servers(
    server: &Server,
    user: &str,
    pass: &str,
    participant: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "http://{}/v1/accounts/{}/participants/{participant}/iceServers",
            server.http, server.account
        ))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .expect("request")
}

/// A new participant of the server's account; its id.
async fn new_participant(server: &Server) -> String {
    let (participant, _) = server
        .control
        .create_participant(&server.account, NewParticipant::default())
        .await
        .expect("participant");
    participant.id.to_string()
}

#[tokio::test]
async fn ice_servers_answer_turn_rest_credentials() {
    let mut config = config();
    config.turn_url = vec![
        "turn:turn.example.com:3478?transport=udp".into(),
        "turn:turn.example.com:3478?transport=tcp".into(),
    ];
    config.turn_secret = Some("north-wind".into());
    config.turn_credential_lifetime = Duration::from_secs(3600);
    let server = start(config).await;
    let (user, pass) = (server.user.clone(), server.pass.clone());
    let participant = new_participant(&server).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let response = ice_servers(&server, &user, &pass, &participant).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = response.json().await.expect("JSON");
    let servers = body.as_array().expect("an array");
    assert_eq!(servers.len(), 1, "{body}");
    let s = &servers[0];
    assert_eq!(
        s["urls"],
        json!([
            "turn:turn.example.com:3478?transport=udp",
            "turn:turn.example.com:3478?transport=tcp"
        ])
    );
    let username = s["username"].as_str().expect("username");
    let (expiry, who) = username.split_once(':').expect("expiry:participant");
    assert_eq!(who, participant);
    let expiry: u64 = expiry.parse().expect("epoch seconds");
    assert!(
        (before + 3600..=before + 3602).contains(&expiry),
        "expiry {expiry} is now + lifetime ({before} + 3600)"
    );
    assert_eq!(
        s["credential"].as_str(),
        Some(patchbay::api::turn_credential(b"north-wind", username).as_str())
    );
    assert_eq!(s.as_object().map(|o| o.len()), Some(3), "{s}");
}

#[tokio::test]
async fn ice_servers_are_empty_without_turn_404_for_strangers_401_without_credentials() {
    let server = start(config()).await;
    let (user, pass) = (server.user.clone(), server.pass.clone());
    let participant = new_participant(&server).await;
    let response = ice_servers(&server, &user, &pass, &participant).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.expect("JSON"), json!([]));
    let unknown = ice_servers(
        &server,
        &user,
        &pass,
        "00000000-0000-4000-8000-000000000000",
    )
    .await;
    assert_eq!(unknown.status(), 404);
    let anonymous = ice_servers(&server, &user, "wrong", &participant).await;
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn turn_url_without_secret_is_refused() {
    let mut config = config();
    config.turn_url = vec!["turn:turn.example.com:3478".into()];
    let err = App::build(&config)
        .await
        .err()
        .expect("a TURN URL without a secret is refused");
    assert!(err.to_string().contains("--turn-secret"), "{err}");
}

// ------------------------------------------------------------------------------------------------
// Against coturn (Debian package `coturn`): STUN for `--public-ip auto`, TURN allocations with
// the credentials patchbay mints
// ------------------------------------------------------------------------------------------------

/// A coturn on 127.0.0.1 with the TURN REST shared secret `secret`, stopped when dropped.
struct Coturn {
    port: u16,
    _process: tokio::process::Child,
}

async fn coturn(secret: &str) -> Coturn {
    // A port free for UDP now may be taken for TCP, or its neighbour (coturn's alternative
    // port) taken, by the time coturn binds: coturn then exits, and another port is tried.
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let log = std::env::temp_dir().join(format!("patchbay-coturn-{port}.log"));
        let mut process = tokio::process::Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=patchbay.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--allow-loopback-peers",
                &format!("--log-file={}", log.display()),
                "--simple-log",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("coturn's turnserver (apt-get install coturn)");
        // Ready once it answers a STUN Binding request.
        let server = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if patchbay::reach::stun_public_ip(&server).await.is_ok() {
                let _ = std::fs::remove_file(&log);
                return Coturn {
                    port,
                    _process: process,
                };
            }
            let exited = process.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                let tail: String = std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ");
                failures.push(format!("{server}: {exited:?}, log: {tail}"));
                let _ = std::fs::remove_file(&log);
                break;
            }
        }
    }
    panic!("coturn did not start: {failures:#?}");
}

#[tokio::test]
async fn public_ip_auto_asks_the_stun_server() {
    let turn = coturn("unused").await;
    let mut config = config();
    config.media_listen = "0.0.0.0:0".parse().expect("addr");
    config.media_shards = Some(1);
    config.public_ip = vec![PublicIp::Auto];
    config.stun_server = format!("127.0.0.1:{}", turn.port);
    let app = App::build(&config).await.expect("build app");
    let addresses = app.addresses().clone();
    assert_eq!(addresses.media[0].len(), 1);
    assert_eq!(addresses.media[0][0].ip(), IpAddr::from([127, 0, 0, 1]));
    assert!(!addresses.loopback_only, "the address came from STUN");
    assert_eq!(addresses.rtp_ip, IpAddr::from([127, 0, 0, 1]));
    drop(app);
    drop(turn);

    // Nobody answers: the server does not start, and says what to set.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    config.stun_server = silent.local_addr().expect("addr").to_string();
    let err = App::build(&config)
        .await
        .err()
        .expect("no STUN answer, no start");
    assert!(err.to_string().contains("--public-ip IP"), "{err}");
}

#[tokio::test]
async fn minted_credentials_allocate_on_coturn() {
    let turn = coturn("north-wind").await;
    let mut config = config();
    config.turn_url = vec![format!("turn:127.0.0.1:{}?transport=udp", turn.port)];
    config.turn_secret = Some("north-wind".into());
    let server = start(config).await;
    let participant = new_participant(&server).await;
    let body: Value = ice_servers(&server, &server.user, &server.pass, &participant)
        .await
        .json()
        .await
        .expect("JSON");
    let username = body[0]["username"].as_str().expect("username").to_owned();
    let credential = body[0]["credential"]
        .as_str()
        .expect("credential")
        .to_owned();

    // coturn's own client allocates a relay with them and sends through it.
    let relayed = uclient(turn.port, &username, &credential).await;
    assert!(
        !relayed.contains("Cannot complete Allocation"),
        "allocation with minted credentials: {relayed}"
    );
    // Its final tally: `start_mclient: tot_send_msgs=N, tot_recv_msgs=M`.
    let received = relayed
        .lines()
        .filter_map(|l| l.split("start_mclient: tot_send_msgs=").nth(1))
        .filter_map(|rest| rest.split("tot_recv_msgs=").nth(1))
        .filter_map(|n| n.trim().parse::<u32>().ok())
        .next_back();
    assert!(
        received.is_some_and(|n| n > 0),
        "messages went through the relay: {relayed}"
    );
    // A credential signed with another secret is refused: coturn really checks.
    let forged = patchbay::api::turn_credential(b"south-wind", &username);
    let refused = uclient(turn.port, &username, &forged).await;
    assert!(refused.contains("Cannot complete Allocation"), "{refused}");
}

/// Runs coturn's test client against 127.0.0.1:`port` (client-to-client through relays, 3
/// messages); its output.
async fn uclient(port: u16, username: &str, credential: &str) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("turnutils_uclient")
            .args(["-y", "-n", "3", "-m", "1", "-p", &port.to_string()])
            .args(["-u", username, "-w", credential, "127.0.0.1"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("turnutils_uclient finishes")
    .expect("coturn's turnutils_uclient (apt-get install coturn)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
