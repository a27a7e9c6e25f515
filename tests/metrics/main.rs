//! `GET /metrics` during a real call (issue 12): a str0m device over real UDP (ICE, DTLS-SRTP)
//! publishes an Opus tone, a phone (the test kit's SIP user agent) dials in and hears it, the
//! session is set up over REST. Scrapes of `/metrics` must parse as Prometheus text (a parser
//! crate reads the whole output: malformed output fails the test) and show the call as it
//! happened: the REST routes used (by template, never a raw path with ids), the phone call
//! started, two devices connected, forwarded packets growing, and after the phone's BYE one
//! call ended with reason `remote_bye`.
//!
//! A second test serves `/metrics` on a listener of its own (`--metrics-listen`): the API
//! listener then answers 404.
#![allow(clippy::disallowed_methods)] // a test drives a real server in real time

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use patchbay::config::ServeConfig;
use patchbay::domain::AccountId;
use patchbay_sip::opus::OpusEncoder;
use patchbay_sip::tone::sine_from;
use patchbay_testkit::app::{spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::phone_ua::{dial, power_at, Dial};
use patchbay_testkit::rtc::{builtin_channel, drain, receive, write_frame};
use patchbay_testkit::wait::{eventually, DEADLINE};
use serde_json::{json, Value};
use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The tone the device publishes.
const DEVICE_TONE_HZ: f64 = 660.0;

/// One scrape, parsed: every sample as (name, sorted labels) → value.
struct Scrape(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Scrape {
    /// The value of the sample `name` with exactly these labels, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.0.get(&(name.to_owned(), wanted)).copied()
    }

    /// The sum of every sample named `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// Every label set of `name`.
    fn label_sets(&self, name: &str) -> Vec<Vec<(String, String)>> {
        self.0
            .keys()
            .filter(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
            .collect()
    }
}

/// Scrapes `http://{addr}/metrics` and parses it with `prometheus-parse`; panics on a
/// non-200, a wrong content type or anything the parser refuses.
async fn scrape(addr: SocketAddr) -> Scrape {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    // The parser skips lines it does not understand: check every line's shape as well.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"),
            "malformed sample line: {line:?}"
        );
        assert!(
            line.starts_with("patchbay_") || line.starts_with("process_"),
            "not ours: {line:?}"
        );
    }
    let parsed = prom_text_format_parser::Scrape::parse(&text)
        .unwrap_or_else(|e| panic!("not the Prometheus text format: {e:?}\n{text}"));
    let mut out = BTreeMap::new();
    for metric in parsed.metrics {
        let histogram = metric.kind == prom_text_format_parser::Type::Histogram;
        for sample in metric.samples {
            // A histogram is kept as its count (buckets and sum are checked by the parser).
            use prom_text_format_parser::ValueType;
            match (histogram, sample.value.value_type) {
                (true, ValueType::Count) | (false, ValueType::Sample) => {}
                _ => continue,
            }
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            labels.sort();
            let value: f64 = sample.value.value.parse().expect("a number");
            out.insert((metric.name.clone(), labels), value);
        }
    }
    Scrape(out)
}

struct Rest {
    http: SocketAddr,
    account: String,
    user: String,
    pass: String,
    client: reqwest::Client,
}

impl Rest {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}/v1/accounts/{}{path}", self.http, self.account);
        let mut request = self
            .client
            .request(method.clone(), url)
            .basic_auth(&self.user, Some(&self.pass));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST");
        let status = response.status();
        let text = response.text().await.expect("body");
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }
}

/// The recorder is the process's: the tests of this binary take turns, so that one's gauges
/// (set from its own app at each scrape) never show in the other's scrape.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(config: ServeConfig) -> (RunningApp, Rest) {
    let app = spawn_app_with(&config).await;
    let creds = app
        .control
        .create_account(AccountId::parse("metrics").expect("id"))
        .await
        .expect("account");
    let rest = Rest {
        http: app.http,
        account: "metrics".into(),
        user: creds.username,
        pass: creds.password,
        client: reqwest::Client::new(),
    };
    (app, rest)
}

/// Sends a JSON-RPC request and returns its reply (notifications in between are skipped).
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    let frame = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    loop {
        match ws.next().await.expect("a frame").expect("frame") {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v.get("id").and_then(Value::as_u64) == Some(id) {
                    return v;
                }
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// A device that connects over the WebSocket, publishes one audio track and, once connected
/// (ICE and DTLS over real UDP), sends a 660 Hz Opus tone every 20 ms until the test ends.
/// Returns the WebSocket (kept open) once media flows.
async fn publishing_device(http: SocketAddr, token: &str) -> Ws {
    let url = format!(
        "ws://{http}/v3?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId=metrics-device"
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
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let me = socket.local_addr().expect("addr");
    let now = Instant::now();
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host(me, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    api.add_channel_with_config(builtin_channel(0, "__heartbeat__"));
    api.add_channel_with_config(builtin_channel(1, "__diagnostics__"));
    let mid = api.add_media(
        MediaKind::Audio,
        Direction::SendOnly,
        Some("stream-m".into()),
        None,
        None,
    );
    let (offer, pending) = api.apply().expect("an offer");
    let params = json!({
        "sdpOffer": offer.to_sdp_string(),
        "mediaMetadata": {"mediaStreams": {"stream-m": {"alias": null}}, "dataChannels": {
            "__heartbeat__": {"label": "__heartbeat__", "streamId": 0},
            "__diagnostics__": {"label": "__diagnostics__", "streamId": 1},
        }},
    });
    let reply = call(&mut ws, 2, "offerSdp", params).await;
    let sdp = reply["result"]["sdpAnswer"]
        .as_str()
        .unwrap_or_else(|| panic!("an answer: {reply}"));
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(sdp).expect("answer parses"),
        )
        .expect("answer accepted");
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run_device(rtc, socket, mid, connected_tx));
    tokio::time::timeout(DEADLINE, connected_rx)
        .await
        .expect("the device connects within the deadline")
        .expect("device task");
    ws
}

/// Drives the device's `Rtc` on its socket; writes a tone frame every 20 ms once connected.
async fn run_device(
    mut rtc: Rtc,
    socket: UdpSocket,
    mid: Mid,
    connected: tokio::sync::oneshot::Sender<()>,
) {
    let me = socket.local_addr().expect("addr");
    let mut connected = Some(connected);
    let mut encoder = OpusEncoder::new().expect("encoder");
    let mut sent: u64 = 0;
    let started = Instant::now();
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        let mut events = Vec::new();
        let mut out = Vec::new();
        let (next, err) = drain(&mut rtc, now, |t| out.push(t), &mut events);
        if err.is_some() {
            return;
        }
        for t in out {
            let _ = socket.send_to(&t.contents, t.destination).await;
        }
        if events.iter().any(|e| matches!(e, Event::Connected)) {
            if let Some(tx) = connected.take() {
                let _ = tx.send(());
            }
        }
        if connected.is_none() {
            // Catch up to real time: one 20 ms frame per 20 ms since the start.
            let due = started.elapsed().as_millis() as u64 / 20;
            while sent < due {
                let pcm = sine_from(DEVICE_TONE_HZ, 8000, sent * 160, 160, 8000);
                let packet = encoder.encode(&pcm).expect("encode");
                let time = MediaTime::new(sent * 960, Frequency::FORTY_EIGHT_KHZ);
                write_frame(&mut rtc, mid, Codec::Opus, time, packet, Instant::now());
                sent += 1;
            }
        }
        let wait = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(10));
        match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                let _ = receive(&mut rtc, from, me, &buf[..n], Instant::now());
            }
            Ok(Err(_)) => return,
            Err(_) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_real_call() {
    let _serial = SERIAL.lock().await;
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.media_shards = Some(1);
    let (app, rest) = start(config).await;

    // The session and its two participants, over REST.
    let session = rest
        .call(reqwest::Method::POST, "/sessions", Some(json!({})))
        .await;
    let session = session["id"].as_str().expect("session id").to_owned();
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let created = rest
            .call(
                reqwest::Method::POST,
                "/participants",
                Some(json!({"publishPermissions": ["AUDIO"]})),
            )
            .await;
        let id = created["participant"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        rest.call(
            reqwest::Method::PUT,
            &format!("/sessions/{session}/participants/{id}"),
            Some(json!({"sessionId": session})),
        )
        .await;
        tokens.push(created["token"].as_str().expect("token").to_owned());
    }

    let _device = publishing_device(app.http, &tokens[0]).await;
    let phone = match dial(app.sip, &Dial::with_token(&tokens[1])).await {
        Ok(p) => p,
        Err(r) => panic!("refused: {r:?}"),
    };
    phone.play_tone(1000.0);
    // The phone hears the device's tone: media really went device → SFU → phone.
    eventually("the phone hears the device's tone", DEADLINE, || async {
        let heard = phone.heard();
        heard.len() >= 8000 && power_at(&heard[heard.len() - 4000..], DEVICE_TONE_HZ) > 0.2
    })
    .await;

    // The first scrape shows the call; forwarded packets keep growing while it lasts.
    let first = scrape(app.http).await;
    let forwarded = first.sum("patchbay_media_forwarded_packets_total");
    assert!(forwarded > 0.0, "forwarded packets: {forwarded}");
    assert!(first.sum("patchbay_media_forwarded_bytes_total") > forwarded);
    // One series per shard that has published its counters (each shard publishes once a
    // second, so the number of series depends on timing; the label is what is checked).
    let shards = first.label_sets("patchbay_media_forwarded_packets_total");
    assert!(!shards.is_empty());
    for labels in &shards {
        assert!(
            matches!(&labels[..], [(k, v)] if k == "shard" && v.parse::<usize>().is_ok()),
            "{shards:?}"
        );
    }
    assert_eq!(
        first.get("patchbay_sip_calls_started_total", &[]),
        Some(1.0)
    );
    assert_eq!(first.get("patchbay_phone_calls", &[]), Some(1.0));
    assert_eq!(first.get("patchbay_devices_connected", &[]), Some(2.0));
    assert_eq!(first.get("patchbay_sessions", &[]), Some(1.0));
    assert_eq!(first.get("patchbay_participants", &[]), Some(2.0));
    assert!(first.sum("patchbay_media_shard_busy_microseconds_total") > 0.0);
    // The standard process metrics, read from /proc at the scrape, and the build.
    assert!(
        first
            .get("process_resident_memory_bytes", &[])
            .unwrap_or(0.0)
            > 1e6,
        "resident memory"
    );
    assert!(first.get("process_open_fds", &[]).unwrap_or(0.0) > 0.0);
    assert!(first.get("process_cpu_seconds_total", &[]).is_some());
    assert_eq!(
        first.get(
            "patchbay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let http = format!("{:?}", first.label_sets("patchbay_http_requests_total"));
    let route = |r: &str, method: &str, status: &str| {
        first.get(
            "patchbay_http_requests_total",
            &[("method", method), ("route", r), ("status", status)],
        )
    };
    assert_eq!(
        route("/v1/accounts/{account_id}/sessions", "POST", "200"),
        Some(1.0),
        "{http}"
    );
    assert_eq!(
        route("/v1/accounts/{account_id}/participants", "POST", "200"),
        Some(2.0),
        "{http}"
    );
    assert_eq!(
        route(
            "/v1/accounts/{account_id}/sessions/{session_id}/participants/{participant_id}",
            "PUT",
            "204"
        ),
        Some(2.0),
        "{http}"
    );
    // Never a raw path: no label holds the session's id.
    for sets in first.label_sets("patchbay_http_requests_total") {
        for (_, v) in sets {
            assert!(!v.contains(&session), "a raw path in a label: {v}");
        }
    }
    assert!(
        first
            .get(
                "patchbay_http_request_duration_seconds",
                &[
                    ("method", "POST"),
                    ("route", "/v1/accounts/{account_id}/participants")
                ]
            )
            .is_some_and(|count| count >= 2.0),
        "the latency histogram counts the requests"
    );
    assert!(first.sum("patchbay_db_query_duration_seconds") > 0.0);
    assert!(first
        .get(
            "patchbay_db_pool_connections",
            &[("pool", "read"), ("state", "idle")]
        )
        .is_some());

    eventually("forwarded packets keep growing", DEADLINE, || async {
        scrape(app.http)
            .await
            .sum("patchbay_media_forwarded_packets_total")
            > forwarded
    })
    .await;

    // The phone hangs up: one call ended, by the phone's BYE.
    assert!(phone.hangup().await, "BYE answered");
    eventually("the call is counted as ended", DEADLINE, || async {
        let s = scrape(app.http).await;
        s.get(
            "patchbay_sip_calls_ended_total",
            &[("reason", "remote_bye")],
        ) == Some(1.0)
            && s.get("patchbay_phone_calls", &[]) == Some(0.0)
    })
    .await;
    let last = scrape(app.http).await;
    assert_eq!(last.sum("patchbay_sip_calls_ended_total"), 1.0);
    assert!(
        last.get(
            "patchbay_http_requests_total",
            &[("method", "GET"), ("route", "/metrics"), ("status", "200")]
        )
        .is_some_and(|n| n >= 2.0),
        "scrapes are requests too"
    );
    // Every metric this call brought out is described (# HELP) and documented in
    // docs/metrics.md, where operators look them up.
    let text = reqwest::get(format!("http://{}/metrics", app.http))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("body");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    let typed: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(typed.len() > 20, "metrics typed: {typed:?}");
    for name in typed {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no # HELP line"
        );
        assert!(
            docs.contains(&format!("`{name}`")),
            "{name} is not documented in docs/metrics.md"
        );
    }
    app.stop().await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_metrics_on_its_own_listener_only() {
    let _serial = SERIAL.lock().await;
    // A free port for the metrics listener.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.telemetry.metrics_listen = Some(addr);
    let (app, _rest) = start(config).await;
    let on_api = reqwest::get(format!("http://{}/metrics", app.http))
        .await
        .expect("request");
    assert_eq!(
        on_api.status(),
        404,
        "the API listener does not serve /metrics"
    );
    let s = scrape(addr).await;
    assert!(s.get("patchbay_devices_connected", &[]).is_some());
    app.stop().await.expect("stopped");
}
