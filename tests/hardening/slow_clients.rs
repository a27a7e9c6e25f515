//! Slow clients against the real binary with the common open-file limit of 1,024: 1,100
//! connections from one address that send half a request head, nothing, half a body, or half
//! a SIP message over TCP, and hold. Meanwhile `/healthz`, a REST call and a device
//! WebSocket from another address must succeed; every slow connection must be closed by the
//! server within its timeout (2 s here, set by flags), and afterwards the server holds no more
//! descriptors than before; the server's CPU must stay low.
//!
//! Bounds are generous on purpose (the machine is shared and noisy): the issue asks for the
//! good requests to succeed "within a second", we assert 5 s and print the time taken; the
//! slow connections must be closed within the 2 s timeout plus 8 s; CPU below half a core
//! (a spinning accept loop takes a whole one).
// The receivers and the device churn run as tasks, and the probes are paced.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SLOW: usize = 1_100;
/// The header, body and SIP head timeouts given to the server.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Slack on the server's timeouts before a slow connection counts as never closed.
const SLACK: Duration = Duration::from_secs(8);
/// Bound on each good request ("within a second" in the issue; generous here).
const GOOD: Duration = Duration::from_secs(5);

/// The tests load the machine on purpose and measure the server's CPU: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server {
    child: Child,
    http: SocketAddr,
    sip: SocketAddr,
    ice_tcp: SocketAddr,
    basic: String,
    _dir: TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start() -> Server {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "patchbay-slow-{}-{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);
    let secs = TIMEOUT.as_secs().to_string();
    let mut child = Command::new("prlimit")
        .arg("--nofile=1024:1024")
        .arg(env!("CARGO_BIN_EXE_patchbay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--media-listen",
            "127.0.0.1:0",
        ])
        .args(["--media-shards", "1", "--sip-listen", "127.0.0.1:0"])
        .args(["--http-header-timeout", &secs, "--http-body-timeout", &secs])
        .args(["--sip-tcp-head-timeout", &secs])
        .args(["--webhook-allow-network", "127.0.0.0/8"])
        .arg("--data-dir")
        .arg(&dir.0)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("prlimit and the patchbay binary");
    let stdout = child.stdout.take().expect("stdout");
    let (mut http, mut sip, mut user, mut pass, mut ice_tcp) = (None, None, None, None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("username: ") {
            user = Some(rest.to_owned());
        } else if let Some(rest) = line.strip_prefix("password: ") {
            pass = Some(rest.to_owned());
        } else if let Some(rest) =
            line.strip_prefix("patchbay media shard 0: TCP (ICE-TCP, passive), ICE candidates ")
        {
            ice_tcp = rest.split([' ', ',']).next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("patchbay SIP on ") {
            sip = rest.split(' ').next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("patchbay listening on http://") {
            http = rest.parse().ok();
            break;
        }
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        user.expect("username"),
        pass.expect("password")
    ));
    Server {
        child,
        http: http.expect("http address"),
        sip: sip.expect("sip address"),
        ice_tcp: ice_tcp.expect("ICE-TCP address"),
        basic,
        _dir: dir,
    }
}

/// Descriptors the process has open.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / hz
}

/// One slow connection from 127.0.9.2 (another /24 than the good requests' 127.0.0.1): how long after sending `start` the server closed it
/// (zero: refused at the door, which is fine), or an error if it stayed open too long.
async fn slow(
    to: SocketAddr,
    start: Arc<Vec<u8>>,
    sent: Arc<AtomicUsize>,
) -> Result<Duration, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind("127.0.9.2:0".parse().expect("addr"))
        .map_err(|e| e.to_string())?;
    let connected = tokio::time::timeout(SLACK, socket.connect(to)).await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        _ => {
            sent.fetch_add(1, Ordering::Relaxed);
            return Ok(Duration::ZERO); // refused at the door
        }
    };
    let began = Instant::now();
    let _ = stream.write_all(&start).await;
    sent.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(began + TIMEOUT + SLACK, stream.read(&mut buf)).await {
            Err(_) => return Err("still open after the timeout and its slack".into()),
            Ok(Ok(0) | Err(_)) => return Ok(began.elapsed()),
            Ok(Ok(_)) => {} // a response (408/400/...) before the close
        }
    }
}

async fn good_requests(server: &Server) {
    let client = reqwest::Client::builder()
        .timeout(GOOD)
        .build()
        .expect("client");
    let began = Instant::now();
    let health = client
        .get(format!("http://{}/healthz", server.http))
        .send()
        .await
        .expect("/healthz answered");
    assert!(health.status().is_success());
    let created: serde_json::Value = client
        .post(format!(
            "http://{}/v1/accounts/dev/participants",
            server.http
        ))
        .header("authorization", format!("Basic {}", server.basic))
        .send()
        .await
        .expect("REST answered")
        .error_for_status()
        .expect("REST succeeded")
        .json()
        .await
        .expect("JSON");
    let token = created["token"].as_str().expect("a token");
    let url = format!("ws://{}/v3?token={token}&uniqueId=slow-test", server.http);
    let (mut ws, _) = tokio::time::timeout(GOOD, tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket within the bound")
        .expect("WebSocket upgrade");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","method":"ping","id":1}"#.into(),
    ))
    .await
    .expect("send");
    loop {
        match tokio::time::timeout(GOOD, ws.next())
            .await
            .expect("a reply")
        {
            Some(Ok(Message::Text(t))) => {
                assert!(t.contains("\"result\""), "{t}");
                break;
            }
            Some(Ok(_)) => continue,
            other => panic!("device WebSocket: {other:?}"),
        }
    }
    let _ = ws.close(None).await;
    let took = began.elapsed();
    println!("  health, REST and device WebSocket answered in {took:?}");
    assert!(took < GOOD * 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_take_the_server_down() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let server = start();
    let pid = server.child.id();
    let half_body = format!(
        "POST /v1/accounts/dev/participants HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"tag\":",
        server.basic
    );
    let variants: [(&str, SocketAddr, Vec<u8>); 4] = [
        ("half a header", server.http, b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Ag".to_vec()),
        ("idle", server.http, Vec::new()),
        ("half a body", server.http, half_body.into_bytes()),
        (
            "half a SIP message over TCP",
            server.sip,
            b"OPTIONS sip:patchbay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bK1\r\nCSeq: 1 OP".to_vec(),
        ),
    ];
    for (name, to, start) in variants {
        println!("{SLOW} slow connections: {name}");
        let baseline = open_descriptors(pid);
        let cpu_before = cpu_seconds(pid);
        let wall = Instant::now();
        let start = Arc::new(start);
        let sent = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..SLOW {
            tasks.spawn(slow(to, start.clone(), sent.clone()));
        }
        let deadline = Instant::now() + SLACK;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        while sent.load(Ordering::Relaxed) < SLOW && Instant::now() < deadline {
            poll.tick().await;
        }
        good_requests(&server).await;
        let mut held = 0;
        let mut never_closed = 0;
        while let Some(outcome) = tasks.join_next().await {
            match outcome.expect("task") {
                Ok(closed_after) if closed_after >= TIMEOUT / 2 => held += 1,
                Ok(_) => {}
                Err(_) => never_closed += 1,
            }
        }
        // The server holds none of them any more: its descriptors are back near where they
        // were before the attack. Connections still queued in the kernel when the clients gave
        // up are accepted late and then time out on the server's clock, so allow the timeout
        // once more (plus the slack for a loaded machine) before reading the count.
        let settle = Instant::now() + TIMEOUT + SLACK;
        let mut fds = open_descriptors(pid);
        let mut recheck = tokio::time::interval(Duration::from_millis(100));
        while fds > baseline + 16 && Instant::now() < settle {
            recheck.tick().await;
            fds = open_descriptors(pid);
        }
        println!(
            "  held until the timeout: {held}; server descriptors after: {fds} (before {baseline})"
        );
        assert!(
            fds <= baseline + 16,
            "{name}: the server still holds {fds} descriptors"
        );
        // A connection that sent bytes always reaches the server and must have been closed.
        // One that sends nothing may never reach it: when the burst overflows the kernel's
        // accept queue, the client's handshake completes (SYN cookies) while the server has no
        // state for it at all, so it cannot close it (nor does it cost the server anything).
        if start.is_empty() {
            println!("  never reached the server (accept-queue overflow): {never_closed}");
        } else {
            assert_eq!(
                never_closed, 0,
                "{name}: connections left open by the server"
            );
        }
        let cpu = (cpu_seconds(pid) - cpu_before) / wall.elapsed().as_secs_f64();
        println!("  server CPU {:.0}% of a core", cpu * 100.0);
        assert!(
            held > 0,
            "{name}: no connection was held: the test tested nothing"
        );
        assert!(cpu < 0.5, "{name}: server CPU {cpu:.2} of a core");
    }
    // Still serving once the attack is over.
    good_requests(&server).await;
}

/// Receivers answering 204 on keep-alive connections, each on its own port of 127.0.0.1 (a
/// receiver is a URL's scheme, host and port).
async fn start_receivers(n: usize, delivered: Arc<AtomicUsize>) -> Vec<SocketAddr> {
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        addrs.push(listener.local_addr().expect("addr"));
        let delivered = delivered.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                delivered.fetch_add(1, Ordering::Relaxed);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    addrs
}

/// One REST call, one device WebSocket and one SIP OPTIONS over TCP; how many succeeded.
async fn probe(server: &Server, n: usize) -> [bool; 3] {
    let client = reqwest::Client::builder()
        .timeout(GOOD)
        .build()
        .expect("client");
    let rest = client
        .post(format!("http://{}/v1/accounts/dev/sessions", server.http))
        .header("authorization", format!("Basic {}", server.basic))
        .json(&serde_json::json!({"tag": format!("probe-{n}")}))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    let created: Option<serde_json::Value> = async {
        client
            .post(format!(
                "http://{}/v1/accounts/dev/participants",
                server.http
            ))
            .header("authorization", format!("Basic {}", server.basic))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }
    .await;
    let device = match created.as_ref().and_then(|c| c["token"].as_str()) {
        Some(token) => {
            let url = format!("ws://{}/v3?token={token}&uniqueId=probe-{n}", server.http);
            matches!(
                tokio::time::timeout(GOOD, tokio_tungstenite::connect_async(url)).await,
                Ok(Ok(_))
            )
        }
        None => false,
    };
    let options = format!(
        "OPTIONS sip:patchbay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK-p{n}\r\nFrom: <sip:t@127.0.0.1>;tag={n}\r\nTo: <sip:patchbay@127.0.0.1>\r\nCall-ID: probe-{n}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let sip = tokio::time::timeout(GOOD, async {
        let mut stream = tokio::net::TcpStream::connect(server.sip).await.ok()?;
        stream.write_all(options.as_bytes()).await.ok()?;
        let mut buf = vec![0u8; 2048];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"SIP/2.0 200"))
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false);
    [rest, device, sip]
}

/// Issue 22: deliveries to 1,100 receivers, each on its own port and keeping its connections
/// alive, at the common open-file limit of 1,024. The webhook client keeps idle connections
/// for a bounded number of receivers only, so the server keeps answering REST, devices and
/// SIP meanwhile (each at least 9 of 10 probes), and every event is delivered. With an idle
/// connection kept per receiver, as before, the deliveries held over a thousand descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_many_receivers_leave_descriptors_for_everything_else() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const RECEIVERS: usize = 1_100;
    let server = start();
    let pid = server.child.id();
    let delivered = Arc::new(AtomicUsize::new(0));
    let receivers = start_receivers(RECEIVERS, delivered.clone()).await;
    let client = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(RECEIVERS);
    for addr in &receivers {
        let created: serde_json::Value = client
            .post(format!(
                "http://{}/v1/accounts/dev/participants",
                server.http
            ))
            .header("authorization", format!("Basic {}", server.basic))
            .json(&serde_json::json!({"callbackUrl": format!("http://{addr}/hook")}))
            .send()
            .await
            .expect("REST answered")
            .error_for_status()
            .expect("participant created")
            .json()
            .await
            .expect("JSON");
        tokens.push(created["token"].as_str().expect("token").to_owned());
    }
    // Each device connects and goes: onConnect and onDisconnect for each receiver.
    let http = server.http;
    let churn = tokio::spawn(async move {
        let began = Instant::now();
        for (i, token) in tokens.iter().enumerate() {
            let url = format!("ws://{http}/v3?token={token}&uniqueId=churn-{i}");
            // Connected once it answers a ping: then its onConnect is recorded.
            if let Ok(Ok((mut ws, _))) =
                tokio::time::timeout(GOOD, tokio_tungstenite::connect_async(url)).await
            {
                let ping = r#"{"jsonrpc":"2.0","method":"ping","id":1}"#;
                if ws.send(Message::Text(ping.into())).await.is_ok() {
                    let _ = tokio::time::timeout(GOOD, ws.next()).await;
                }
                drop(ws);
            }
        }
        println!("churn took {:?}", began.elapsed());
    });
    // Probe while devices churn and until every event is delivered (at least 10 times).
    let expected = 2 * RECEIVERS;
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut peak, mut probes, mut ok) = (0, 0usize, [0usize; 3]);
    while probes < 10
        || (!churn.is_finished() || delivered.load(Ordering::Relaxed) < expected)
            && Instant::now() < deadline
    {
        for (count, good) in ok.iter_mut().zip(probe(&server, probes).await) {
            *count += usize::from(good);
        }
        probes += 1;
        peak = peak.max(open_descriptors(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    churn.await.expect("churn");
    let got = delivered.load(Ordering::Relaxed);
    println!(
        "probes that succeeded of {probes}: REST {}, device {}, SIP {}; deliveries {got} of {expected}; server descriptors at most {peak}",
        ok[0], ok[1], ok[2]
    );
    for (what, count) in ["REST", "device", "SIP OPTIONS"].iter().zip(ok) {
        assert!(
            probes >= 10 && count * 10 >= probes * 9,
            "{what}: {count} of {probes} probes succeeded"
        );
    }
    assert!(got >= expected, "{got} of {expected} events delivered");
}

/// A device's ICE-TCP check from 127.0.0.1: a participant joins over the WebSocket and offers
/// to publish; a STUN binding request for its connection, signed with the server's ICE
/// password from the answer, goes over TCP (RFC 4571 framing) to the server's ICE-TCP
/// candidate. Succeeds when the server answers it with a binding success.
async fn ice_tcp_check(server: &Server, n: usize) -> bool {
    use hmac::Mac;
    let outcome = tokio::time::timeout(GOOD * 2, async {
        let client = reqwest::Client::new();
        let created: serde_json::Value = client
            .post(format!(
                "http://{}/v1/accounts/dev/participants",
                server.http
            ))
            .header("authorization", format!("Basic {}", server.basic))
            .json(&serde_json::json!({"publishPermissions": ["AUDIO"]}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let token = created["token"].as_str()?;
        let url = format!("ws://{}/v3?token={token}&uniqueId=ice-{n}", server.http);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
        let now = std::time::Instant::now();
        let mut rtc = str0m::Rtc::builder().build(now);
        let me: SocketAddr = "127.0.0.1:9".parse().ok()?;
        rtc.add_local_candidate(str0m::Candidate::host(me, "udp").ok()?);
        let mut api = rtc.sdp_api();
        api.add_channel("probe".into());
        let (offer, _pending) = api.apply()?;
        let offer = offer.to_sdp_string();
        let request = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "offerSdp",
            "params": {"sdpOffer": offer, "mediaMetadata": {"mediaStreams": {}}}});
        ws.send(Message::Text(request.to_string().into()))
            .await
            .ok()?;
        let answer = loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                return None;
            };
            let v: serde_json::Value = serde_json::from_str(&t).ok()?;
            if v["id"] == 1 {
                break v["result"]["sdpAnswer"].as_str()?.to_owned();
            }
        };
        let attr = |sdp: &str, name: &str| {
            sdp.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (ours, theirs, password) = (
            attr(&offer, "a=ice-ufrag:")?,
            attr(&answer, "a=ice-ufrag:")?,
            attr(&answer, "a=ice-pwd:")?,
        );
        let tcp: SocketAddr = answer.lines().find_map(|l| {
            let f: Vec<&str> = l.strip_prefix("a=candidate:")?.split(' ').collect();
            (f.get(2)?.eq_ignore_ascii_case("tcp") && f.get(4) == Some(&"127.0.0.1"))
                .then(|| format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok())?
        })?;
        let username = format!("{theirs}:{ours}");
        let binding = is::stun::StunMessage::binding_request(
            &username,
            is::stun::TransId::new(),
            true,
            7,
            1_845_494_015,
            false,
        );
        let mut buf = [0u8; 512];
        let len = binding
            .to_bytes(Some(password.as_bytes()), &mut buf, |key, parts| {
                let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).expect("any key");
                for part in parts {
                    mac.update(part);
                }
                mac.finalize().into_bytes().into()
            })
            .ok()?;
        let mut stream = tokio::net::TcpStream::connect(tcp).await.ok()?;
        let mut framed = u16::try_from(len).ok()?.to_be_bytes().to_vec();
        framed.extend_from_slice(&buf[..len]);
        stream.write_all(&framed).await.ok()?;
        let mut size = [0u8; 2];
        stream.read_exact(&mut size).await.ok()?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(size))];
        stream.read_exact(&mut reply).await.ok()?;
        let reply = is::stun::StunMessage::parse(&reply).ok()?;
        drop(ws);
        Some(reply.is_successful_binding_response())
    })
    .await;
    matches!(outcome, Ok(Some(true)))
}

/// Attacker connections open at once, now and at most.
#[derive(Default)]
struct Held {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// Keeps `width` connections from `from` to `to` open, each sending `start` and then nothing;
/// a connection the server closes (or refuses) is opened again at once, until `stop`.
async fn hold(
    from: std::net::IpAddr,
    to: SocketAddr,
    start: Arc<Vec<u8>>,
    width: usize,
    stop: Arc<tokio::sync::Notify>,
    opened: Arc<AtomicUsize>,
    held: Arc<Held>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..width {
        let (start, opened, held) = (start.clone(), opened.clone(), held.clone());
        tasks.spawn(async move {
            loop {
                let Ok(socket) = TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(SocketAddr::new(from, 0)).is_err() {
                    return;
                }
                if let Ok(mut stream) = socket.connect(to).await {
                    opened.fetch_add(1, Ordering::Relaxed);
                    let now = held.now.fetch_add(1, Ordering::Relaxed) + 1;
                    held.peak.fetch_max(now, Ordering::Relaxed);
                    let _ = stream.write_all(&start).await;
                    let mut buf = [0u8; 256];
                    while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                    held.now.fetch_sub(1, Ordering::Relaxed);
                }
                // Re-open at once (a pause of a few milliseconds keeps the test's own CPU in
                // check; the server sees a steady flood either way).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    stop.notified().await;
    tasks.shutdown().await;
}

/// Issue 22: slow clients from four networks (127.0.1.1 to 127.0.4.1) each try to hold 150
/// connections on every listener (half a request head on HTTP, half a message on SIP over TCP,
/// nothing on ICE-TCP), re-opening each as soon as it is closed, against the binary at the
/// common open-file limit of 1,024. A fifth network's REST calls, device connections, SIP
/// OPTIONS and ICE-TCP checks still succeed (each at least 9 of 10). Before the shares and the
/// shedding, two of those addresses were enough to refuse the fifth nearly every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_from_four_networks_do_not_lock_out_a_fifth() {
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    const WIDTH: usize = 150;
    let server = start();
    let ice_tcp = server.ice_tcp;
    let stop = Arc::new(tokio::sync::Notify::new());
    let opened = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Held::default());
    let mut attackers = tokio::task::JoinSet::new();
    let half_head = Arc::new(b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Ag".to_vec());
    let half_sip = Arc::new(
        b"OPTIONS sip:patchbay@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bK1\r\nCSeq: 1 OP"
            .to_vec(),
    );
    for network in 1..=4u8 {
        let from = std::net::IpAddr::from([127, 0, network, 1]);
        for (to, start) in [
            (server.http, half_head.clone()),
            (server.sip, half_sip.clone()),
            (ice_tcp, Arc::new(Vec::new())),
        ] {
            attackers.spawn(hold(
                from,
                to,
                start,
                WIDTH,
                stop.clone(),
                opened.clone(),
                held.clone(),
            ));
        }
    }
    // Let the flood build up before probing.
    let flooding = Instant::now() + Duration::from_secs(30);
    while opened.load(Ordering::Relaxed) < 4 * 3 * WIDTH && Instant::now() < flooding {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.child.id();
    let mut ok = [0usize; 4];
    for n in 0..10 {
        let [rest, device, sip] = probe(&server, 100 + n).await;
        let ice = ice_tcp_check(&server, n).await;
        for (count, good) in ok.iter_mut().zip([rest, device, sip, ice]) {
            *count += usize::from(good);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flood = opened.load(Ordering::Relaxed);
    let peak = held.peak.load(Ordering::Relaxed);
    let fds = open_descriptors(pid);
    stop.notify_waiters();
    while attackers.join_next().await.is_some() {}
    println!(
        "of 10 probes: REST {}, device {}, SIP OPTIONS {}, ICE-TCP check {}; attacker connections opened {flood}, at most {peak} open at once; server descriptors {fds}",
        ok[0], ok[1], ok[2], ok[3]
    );
    // The flood held hundreds of connections at once (the listeners' caps at this limit add
    // up to 672), not only re-opened refused ones.
    assert!(
        flood >= 4 * 3 * WIDTH && peak >= 300,
        "the attackers opened {flood} connections, at most {peak} at once: the test tested nothing"
    );
    for (what, count) in ["REST", "device", "SIP OPTIONS", "ICE-TCP check"]
        .iter()
        .zip(ok)
    {
        assert!(count >= 9, "{what}: {count} of 10 probes succeeded");
    }
}
