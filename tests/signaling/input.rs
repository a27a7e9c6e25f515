//! Input bounds on the device's side (issue 9): oversized SDP is refused with a precise
//! JSON-RPC error before anything parses it, and the connection goes on working; STUN noise
//! sent to the media port costs the log at most a summary line per interval.
#![allow(clippy::disallowed_methods)] // these tests drive a real server and a real binary in real time

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

use super::*;

const INVALID_PARAMS: i64 = -32602;

/// A publish offer of the SDK's shape, from a real WebRTC stack, publishing audio.
fn real_offer(rtc: &mut Rtc) -> String {
    let mut api = rtc.sdp_api();
    api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("stream-p".into()),
        None,
        None,
    );
    let (offer, _pending) = api.apply().expect("an offer");
    offer.to_sdp_string()
}

/// `base` followed by `extra` more audio m-lines, each about `section_bytes` long.
fn inflated(base: &str, extra: usize, section_bytes: usize) -> String {
    let mut sdp = String::with_capacity(base.len() + extra * section_bytes);
    sdp.push_str(base);
    let filler = "a".repeat(section_bytes.saturating_sub(60));
    for i in 0..extra {
        sdp.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:x{i}\r\na=x-pad:{filler}\r\n"
        ));
    }
    sdp
}

fn offer_frame(id: u64, sdp: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "offerSdp", "params": {
        "sdpOffer": sdp,
        "mediaMetadata": {"mediaStreams": {"stream-p": {"alias": "cam"}}},
    }})
    .to_string()
}

#[tokio::test]
async fn oversized_sdp_is_refused_precisely_and_the_call_goes_on() {
    let s = server().await;
    let token = s.token(MediaKinds::ALL).await;
    let mut ws = s.connect("/v3", &token).await;
    let mut rtc = Rtc::builder().build(Instant::now());
    let base = real_offer(&mut rtc);

    // 6,000 m-lines in about 4 MB: refused by size, before anything parses it.
    let huge = inflated(&base, 6_000, 700);
    assert!(huge.len() > 4_000_000, "{}", huge.len());
    let r = call(&mut ws, &offer_frame(1, &huge)).await;
    assert_eq!(r["id"], json!(1), "{r}");
    assert_eq!(r["error"]["code"], json!(INVALID_PARAMS), "{r}");
    let m = r["error"]["message"].as_str().unwrap_or("");
    assert!(
        m.starts_with("sdpOffer is ") && m.ends_with("at most 65536 bytes of SDP are allowed"),
        "{m}"
    );

    // Small, but 65 media sections: refused by count.
    let many = inflated(&base, 64, 60);
    assert!(many.len() < 64 * 1024);
    let r = call(&mut ws, &offer_frame(2, &many)).await;
    assert_eq!(r["error"]["code"], json!(INVALID_PARAMS), "{r}");
    assert_eq!(
        r["error"]["message"],
        json!("sdpOffer has 65 media sections (m= lines); at most 64 are allowed")
    );

    // A huge answer is refused the same way.
    let r = call(
        &mut ws,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "answerSdp",
            "params": {"sdpAnswer": "v=0\r\n".repeat(60_000)}})
        .to_string(),
    )
    .await;
    assert_eq!(r["error"]["code"], json!(INVALID_PARAMS), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("sdpAnswer is "),
        "{r}"
    );

    // The same connection still publishes a normal offer.
    let r = call(&mut ws, &offer_frame(4, &base)).await;
    assert_eq!(r["id"], json!(4), "{r}");
    let answer = r["result"]["sdpAnswer"].as_str().unwrap_or("");
    assert!(answer.starts_with("v=0"), "{r}");
}

/// The server binary with the default log filter, its stderr collected line by line.
struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn start(media: std::net::SocketAddr) -> Binary {
        let data = std::env::temp_dir().join(format!("patchbay-noise-{:016x}", rand_u64()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_patchbay"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--sip-listen",
                "127.0.0.1:0",
            ])
            .args(["--rtp-ports", "0-0", "--media-shards", "1"])
            .arg("--media-listen")
            .arg(media.to_string())
            .arg("--data-dir")
            .arg(&data)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(line);
            }
        });
        // Ready when it says where it listens; stdout is drained for as long as it runs.
        let stdout = child.stdout.take().expect("stdout");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("patchbay listening on") {
                    let _ = ready_tx.send(());
                }
            }
        });
        let started = ready.recv_timeout(Duration::from_secs(60)).is_ok();
        assert!(started, "the binary did not start: {:?}", stderr.lock());
        Binary { child, stderr }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().expect("lines").clone()
    }
}

fn rand_u64() -> u64 {
    let id = patchbay::domain::ParticipantId::random().as_uuid();
    id.as_u64_pair().0
}

/// A STUN binding request with attributes the ICE library warns about when it parses them
/// (MAPPED-ADDRESS, UNKNOWN-ATTRIBUTES, ALTERNATE-SERVER, a NETWORK-COST of the wrong length)
/// and no valid integrity: what anyone can send to the media port.
fn noisy_stun() -> Vec<u8> {
    fn attr(kind: u16, value: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value);
        out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
    }
    let address = [0, 1, 0, 9, 192, 0, 2, 1];
    let mut body = Vec::new();
    attr(0x0001, &address, &mut body);
    attr(0x000A, &[0x77, 0x77, 0x77, 0x78], &mut body);
    attr(0x8023, &address, &mut body);
    attr(0xC057, &[0, 0], &mut body);
    attr(0x0006, b"ab:cd", &mut body);
    attr(0x8028, &[0, 0, 0, 0], &mut body);
    let mut packet = Vec::new();
    packet.extend_from_slice(&0x0001u16.to_be_bytes());
    packet.extend_from_slice(&(body.len() as u16).to_be_bytes());
    packet.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    packet.extend_from_slice(&[7; 12]);
    packet.extend_from_slice(&body);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_noise_costs_the_log_one_summary_line_per_interval() {
    // A free UDP port for the media plane (released just before the binary binds it).
    let media = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("probe")
        .local_addr()
        .expect("addr");
    let server = Binary::start(media);
    let before = server.lines().len();
    let noise = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let packet = noisy_stun();
    for _ in 0..1000 {
        noise.send_to(&packet, media).await.expect("send");
    }
    // The report interval is 10 s: after it, one more packet brings the summary line.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    noise.send_to(&packet, media).await.expect("send");
    let summary = "dropped 1001 unauthenticated datagrams from 1 sources";
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.lines().iter().any(|l| l.contains(summary)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new: Vec<String> = server.lines()[before..].to_vec();
    assert!(
        new.iter().any(|l| l.contains(summary)),
        "no summary line: {new:#?}"
    );
    assert!(
        new.len() <= 2,
        "1,001 noise packets wrote {} lines: {new:#?}",
        new.len()
    );
}

#[tokio::test]
async fn a_token_with_an_absurd_expiry_is_refused_and_the_server_keeps_serving() {
    use patchbay::store::Store;
    let url = patchbay_testkit::db::sqlite_url();
    let app = spawn_app(&url).await;
    let account = AccountId::parse("sig").expect("id");
    app.control
        .create_account(account.clone())
        .await
        .expect("account");
    let (p, good) = app
        .control
        .create_participant(&account, NewParticipant::default())
        .await
        .expect("participant");
    // Whoever holds the signing secret can put anything in a token: a defence in depth.
    let store = patchbay::store::open(&url).await.expect("store");
    let secret = store
        .secret(patchbay::token::SECRET_NAME, &[0; 32])
        .await
        .expect("secret");
    let header = jsonwebtoken::Header {
        typ: None,
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
    };
    let key = jsonwebtoken::EncodingKey::from_secret(&secret);
    let s = Server {
        base: format!("ws://{}", app.http),
        control: app.control.clone(),
        account: account.clone(),
        _app: app,
    };
    for exp in [json!(1u64 << 63), json!(u64::MAX), json!(1e300)] {
        let claims = json!({"a": "sig", "p": p.id.to_string(), "v": "v3", "exp": exp});
        let forged = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
        let mut ws = s.connect("/v3", &forged).await;
        let reason = expect_close_1000(&mut ws).await;
        assert!(reason.contains("malformed"), "exp {exp}: {reason}");
    }
    // Not yet valid: refused with its own reason.
    let later = json!({"a": "sig", "p": p.id.to_string(), "v": "v3",
        "exp": 4_000_000_000u64, "nbf": 4_000_000_000u64});
    let forged = jsonwebtoken::encode(&header, &later, &key).expect("sign");
    let mut ws = s.connect("/v3", &forged).await;
    assert!(expect_close_1000(&mut ws).await.contains("not valid yet"));
    // The connection tasks did not panic: the real token still joins.
    let mut ws = s.connect("/v3", &good).await;
    let r = call(
        &mut ws,
        r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":1}"#,
    )
    .await;
    assert_eq!(r, json!({"jsonrpc":"2.0","result":{},"id":1}));
}
