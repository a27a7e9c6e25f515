//! Contact-centre load for a running patchbay server (issue #13, item 6): many calls of three,
//! audio only, caller / agent / supervisor with the whisper wiring, some callers being phones
//! through the SIP bridge.
//!
//! Per call the tool creates a session and three participants over REST (the dev account,
//! HTTP Basic) and adds each with explicit subscriptions (`{"participants": [...]}`):
//!
//! | participant | hears |
//! |---|---|
//! | caller | the agent only |
//! | agent | the caller and the supervisor |
//! | supervisor | the caller and the agent |
//!
//! Agents and supervisors are synthetic browsers (a JSON-RPC WebSocket to `/v3/` speaking
//! protocol v3 like the browser SDK, a str0m publish `Rtc` and a subscribe `Rtc`, each on its
//! own UDP socket on 127.0.0.1; the same device as `examples/media_load.rs`, audio only).
//! Callers are browsers too, except the first `--phones` calls', which dial the SIP bridge
//! with the test phone of `patchbay-testkit` (the token in `User-To-User`, a G.711 µ-law tone).
//!
//! **Audio is real Opus.** The bridge decodes the Opus of every source a phone hears to mix
//! it, so synthetic payloads would not do: each browser publishes packets libopus encoded (at
//! start-up, one second of a sine per role, 8 kHz mono, looped: caller 1000 Hz, agent 700 Hz,
//! supervisor 1700 Hz). Each packet is turned into an Opus "code 3" packet whose padding (RFC
//! 6716 §3.2.5: decoders accept any padding value) carries the tool's 22-byte header (magic,
//! publisher, role, sequence, send time), so a browser receiver knows the publisher of every
//! frame, its loss per (publisher, subscriber) and the one-way added latency, and a decoder
//! still plays the tone. The tool decodes one padded loop at start-up to prove it.
//!
//! **Wiring is asserted from what is received.** A browser that receives a frame of a
//! publisher it must not hear (by the header in the payload), or an Opus frame without a
//! header that does not come from the phone it may hear (phone audio is encoded by the
//! bridge, so it is told by the server's `streamMetadata` for the frame's m-line), counts a
//! violation. A phone hears one mixed stream: the tool scans what it heard, second by second,
//! for the supervisor's tone (and a second with no agent tone at all is reported too); any
//! second where the supervisor's share of the power exceeds `--leak-share` is a violation.
//! Any violation makes the tool exit with status 1. `--miswire` subscribes the first
//! browser caller and the first phone caller to their supervisor as well, so the check can be
//! seen to fail.
//!
//! **Loss** (0 loss means all of these are 0): frames written by browsers in the measured
//! window that an allowed subscriber did not receive; RTP sequence gaps in the streams the
//! browsers receive (this covers the phones' audio, which has no header); packets a phone
//! received in the window short of 50/s (2 packets' tolerance for the window's edges); the
//! server's own counters over the window from `/metrics` (jitter-buffer underruns of the
//! bridge, both directions; frames it could not forward); devices that never connected. A run
//! where the tool fell behind its own send schedule (it skips 20 ms slots rather than burst)
//! does not count as 0 loss either: that call count was not offered.
//!
//! Also reported: forwarded packets per server CPU-second (the RTP packets browsers and phones
//! received in the window, and the server's `patchbay_media_forwarded_packets_total`), audio
//! latency p50/p99 browser → browser (phones' legs: not measured), server RSS, the tool's
//! own CPU.
//!
//! ```text
//! cargo run --release --example cc_load -- --url http://127.0.0.1:PORT --sip 127.0.0.1:SIPPORT \
//!     --username U --password P --server-pid PID --calls 20 --phones 5
//! ```
//!
//! Output: human-readable lines, then one line `RESULT {json}`. Traffic goes only to
//! 127.0.0.1.
#![allow(clippy::disallowed_methods)] // a load generator: real clocks, tasks and threads

#[path = "support/load.rs"]
mod load;
#[path = "support/mod.rs"]
mod support;
use load::{clock_ticks, is_rtp, loadavg, ratio, round, rpc_request, rtx_pts, stat_cpu_seconds};
use support::parse_duration;

use patchbay_sip::opus::{OpusDecoder, OpusEncoder, FRAME_SAMPLES_8K};
use patchbay_sip::tone::{goertzel_power, sine_from};
use patchbay_testkit::phone_ua;
use patchbay_testkit::rtc::{self, builtin_channel, payload_type, side, ReceiveError};

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::{Candidate, Event, Input, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(about = "Contact-centre load for patchbay: calls of caller/agent/supervisor (whisper)")]
struct Args {
    /// Base URL of the running server; must be http://127.0.0.1:PORT.
    #[arg(long)]
    url: String,
    /// The server's SIP address (UDP), needed when --phones > 0.
    #[arg(long)]
    sip: Option<SocketAddr>,
    #[arg(long, default_value = "dev")]
    account: String,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// Concurrent calls (sessions of three).
    #[arg(long, default_value_t = 10)]
    calls: usize,
    /// Calls whose caller is a phone through the SIP bridge (the first N calls).
    #[arg(long, default_value_t = 0)]
    phones: usize,
    /// Measured duration, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time between "everyone hears whom they should" and the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Give up waiting for every device to connect and hear its sources after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// A second of a phone's audio where the supervisor's tone has more than this share of
    /// the power is a wiring violation (a pure tone alone has 0.5; agent and supervisor at the
    /// same level 0.25 each).
    #[arg(long, default_value_t = 0.01)]
    leak_share: f64,
    /// Self-test of the wiring check: the first browser caller and the first phone caller are
    /// also subscribed to their supervisor (the tool must then exit 1).
    #[arg(long)]
    miswire: bool,
    /// Server process id: its CPU time over the window and its RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free-form label copied into the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
}

// ---- clock, roles, payload header ---------------------------------------------------------

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the tool started.
fn ns(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Agent,
    Supervisor,
}

const ROLES: [Role; 3] = [Role::Caller, Role::Agent, Role::Supervisor];

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Caller => "caller",
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
        }
    }
    /// The tone a browser of this role publishes (and a phone caller plays).
    fn tone_hz(self) -> f64 {
        match self {
            Role::Caller => 1000.0,
            Role::Agent => 700.0,
            Role::Supervisor => 1700.0,
        }
    }
    /// The roles of the same call this role hears (the whisper wiring).
    fn hears(self) -> &'static [Role] {
        match self {
            Role::Caller => &[Role::Agent],
            Role::Agent => &[Role::Caller, Role::Supervisor],
            Role::Supervisor => &[Role::Caller, Role::Agent],
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

const MAGIC: [u8; 4] = *b"PBCC";
const HDR_LEN: usize = 22;
const HEARTBEAT: &str = "__heartbeat__";
const DIAGNOSTICS: &str = "__diagnostics__";
const AUDIO_EVERY: Duration = Duration::from_millis(20);
const FRAMES_PER_SECOND: f64 = 50.0;
/// A publisher further behind its schedule than this skips frames instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(200);
/// Packets a phone may receive short of 50/s in the window before it counts as loss (the
/// window's two edges).
const PHONE_EDGE_TOLERANCE: u64 = 2;

#[derive(Debug, Clone, Copy)]
struct Hdr {
    publisher: u32,
    seq: u32,
    send_ns: u64,
}

fn put_hdr(buf: &mut [u8], role: Role, h: &Hdr) {
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&h.publisher.to_be_bytes());
    buf[8] = role as u8;
    buf[9] = 0;
    buf[10..14].copy_from_slice(&h.seq.to_be_bytes());
    buf[14..22].copy_from_slice(&h.send_ns.to_be_bytes());
}

/// The header in the padding at the end of a padded Opus packet, if it is one of ours.
fn read_hdr(packet: &[u8]) -> Option<Hdr> {
    let b = packet.get(packet.len().checked_sub(HDR_LEN)?..)?;
    if b[..4] != MAGIC || packet.first().is_none_or(|toc| toc & 3 != 3) {
        return None;
    }
    Some(Hdr {
        publisher: u32::from_be_bytes(b[4..8].try_into().ok()?),
        seq: u32::from_be_bytes(b[10..14].try_into().ok()?),
        send_ns: u64::from_be_bytes(b[14..22].try_into().ok()?),
    })
}

/// Turns a one-frame Opus packet (TOC code 0) into a code 3 packet (one CBR frame) with
/// `HDR_LEN` bytes of padding at its end, where the header goes (RFC 6716 §3.2.5).
fn padded(packet: &[u8]) -> Result<Vec<u8>, String> {
    let (&toc, frame) = packet.split_first().ok_or("empty Opus packet")?;
    if toc & 3 != 0 {
        return Err(format!("Opus packet with TOC code {} (want 0)", toc & 3));
    }
    let mut out = Vec::with_capacity(packet.len() + 3 + HDR_LEN);
    out.push(toc | 3);
    out.push(0x41); // v = 0 (CBR), p = 1 (padding), M = 1 frame
    out.push(HDR_LEN as u8); // padding length (< 255: one byte)
    out.extend_from_slice(frame);
    out.extend_from_slice(&[0; HDR_LEN]);
    Ok(out)
}

/// One second (50 frames) of `hz` encoded by libopus and padded for the header; checked by
/// decoding it again (the tone must come out on top).
fn tone_loop(hz: f64) -> Result<Vec<Vec<u8>>, String> {
    let mut enc = OpusEncoder::new().map_err(|e| e.to_string())?;
    let mut dec = OpusDecoder::new().map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    let mut decoded = Vec::new();
    for i in 0..FRAMES_PER_SECOND as u64 {
        let pcm = sine_from(
            hz,
            8000,
            i * FRAME_SAMPLES_8K as u64,
            FRAME_SAMPLES_8K,
            8000,
        );
        let packet = enc.encode(&pcm).map_err(|e| e.to_string())?;
        let mut p = padded(&packet)?;
        let h = Hdr {
            publisher: u32::MAX,
            seq: 0,
            send_ns: 0,
        };
        let at = p.len() - HDR_LEN;
        put_hdr(&mut p[at..], Role::Caller, &h);
        decoded.extend_from_slice(dec.decode(Some(&p)).map_err(|e| e.to_string())?);
        frames.push(p);
    }
    let share = tone_share(&decoded[8 * FRAME_SAMPLES_8K..], hz);
    if share < 0.3 {
        return Err(format!(
            "the padded Opus loop of {hz} Hz decodes to a {share:.3} share of that tone"
        ));
    }
    Ok(frames)
}

/// The share of the power of `pcm` (8 kHz) at `hz` (0.5 for a pure tone).
fn tone_share(pcm: &[i16], hz: f64) -> f64 {
    let ms = pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len().max(1) as f64;
    if ms == 0.0 {
        0.0
    } else {
        goertzel_power(pcm, hz, 8000) / ms
    }
}

// ---- /proc, /metrics ----------------------------------------------------------------------

/// VmRSS of a process, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The sum of a Prometheus metric's samples whose labels contain `label` ("" for all).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.contains(label))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// The server counters the tool compares over the window.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    forwarded: f64,
    forward_failures: f64,
    underruns_uplink: f64,
    underruns_downlink: f64,
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<Counters> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(Counters {
        forwarded: metric_sum(&text, "patchbay_media_forwarded_packets_total", ""),
        forward_failures: metric_sum(&text, "patchbay_media_forward_failures_total", ""),
        underruns_uplink: metric_sum(
            &text,
            "patchbay_sip_jitter_underruns_total",
            "direction=\"uplink\"",
        ),
        underruns_downlink: metric_sum(
            &text,
            "patchbay_sip_jitter_underruns_total",
            "direction=\"downlink\"",
        ),
    })
}

/// Nearest-rank percentiles of microseconds, in milliseconds.
fn percentiles(mut v: Vec<u32>) -> Value {
    v.sort_unstable();
    let pct = |p: f64| {
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        round(f64::from(v[rank.clamp(1, v.len()) - 1]) / 1000.0, 2)
    };
    json!({"n": v.len(), "p50_ms": pct(50.0), "p99_ms": pct(99.0), "max_ms": pct(100.0)})
}

// ---- shared state --------------------------------------------------------------------------

/// The measured window, in ns since the tool started (0: not set yet).
struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    fn contains(&self, t_ns: u64) -> bool {
        let s = self.start.load(Ordering::Relaxed);
        s != 0 && t_ns >= s && t_ns < self.end.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Progress {
    /// Browser: publish connection up and negotiated. Phone: the call was answered.
    publishing: AtomicBool,
    /// Distinct sources heard (browsers).
    heard: AtomicU32,
    failed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Spec {
    idx: u32,
    call: usize,
    role: Role,
    phone: bool,
    participant: String,
    token: String,
    /// The participants (by index) this one is subscribed to.
    allowed: Vec<u32>,
}

/// What every device may look up about the others.
struct Directory {
    specs: Vec<Spec>,
    by_participant: HashMap<String, u32>,
}

// ---- browsers ------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct DevResult {
    idx: u32,
    /// Frames written in the window.
    frames_win: u64,
    /// RTP datagrams received on the subscribe socket in the window (RTX excluded), bytes.
    sub_rtp_win: u64,
    sub_rtx_win: u64,
    /// Per publisher: frames with a header sent in the window and received.
    pairs: HashMap<u32, u64>,
    /// Per phone publisher: frames received in the window (they carry no send time).
    phone_frames_win: HashMap<u32, u64>,
    /// RTP sequence numbers missing between frames received in the window.
    seq_gaps: u64,
    lat_us: Vec<u32>,
    heard: HashSet<u32>,
    violations: u64,
    violation_examples: Vec<String>,
    /// Frames with a header whose m-line the server labelled with another participant.
    label_mismatches: u64,
    skipped: u64,
    send_errors: u64,
    errors: Vec<String>,
}

enum Rpc {
    Prefs,
    DataOffer(SdpPendingOffer),
    MediaOffer(SdpPendingOffer),
    Answer,
}

struct Dev {
    spec: Spec,
    dir: Arc<Directory>,
    window: Arc<Window>,
    progress: Arc<Progress>,
    tone: Arc<Vec<Vec<u8>>>,
    publish: Rtc,
    subscribe: Rtc,
    pub_sock: UdpSocket,
    sub_sock: UdpSocket,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    pub_timeout: Instant,
    sub_timeout: Instant,
    pub_connected: bool,
    media_ready: bool,
    msid: String,
    audio: Option<(Mid, Pt)>,
    next_audio: Instant,
    audio_seq: u32,
    rpc: HashMap<u64, Rpc>,
    next_id: u64,
    revision: u64,
    sub_channels: bool,
    sub_rtx: Vec<u8>,
    /// The publisher the server's metadata names for each m-line of the subscribe connection.
    mid_source: HashMap<Mid, u32>,
    /// The last RTP sequence number received per m-line (frames received in the window).
    last_seq: HashMap<Mid, u64>,
    events: Vec<Event>,
    res: DevResult,
}

/// Each m-line of `sdp` with the msid it carries.
fn mids_with_msid(sdp: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let (mut mid, mut msid): (Option<String>, Option<String>) = (None, None);
    let mut flush = |mid: &mut Option<String>, msid: &mut Option<String>| {
        if let (Some(m), Some(s)) = (mid.take(), msid.take()) {
            out.push((m, s));
        }
    };
    for line in sdp.lines() {
        let line = line.trim_end();
        if line.starts_with("m=") {
            flush(&mut mid, &mut msid);
        } else if let Some(m) = line.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if let Some(s) = line.strip_prefix("a=msid:") {
            msid = s.split_whitespace().next().map(str::to_owned);
        }
    }
    flush(&mut mid, &mut msid);
    out
}

impl Dev {
    async fn new(
        spec: Spec,
        dir: Arc<Directory>,
        window: Arc<Window>,
        progress: Arc<Progress>,
        tone: Arc<Vec<Vec<u8>>>,
    ) -> std::io::Result<Dev> {
        let now = Instant::now();
        let pub_sock = UdpSocket::bind("127.0.0.1:0").await?;
        let sub_sock = UdpSocket::bind("127.0.0.1:0").await?;
        let (pub_addr, sub_addr) = (pub_sock.local_addr()?, sub_sock.local_addr()?);
        let config = || Rtc::builder().clear_codecs().enable_opus(true, false);
        let mut publish = config().build(now);
        // No audio hold-back here: a lost packet must not delay the next frames, so the
        // latency measured is the server's.
        let mut subscribe = config().set_reordering_size_audio(0).build(now);
        let host = |a| Candidate::host(a, "udp").map_err(|e| std::io::Error::other(e.to_string()));
        publish.add_local_candidate(host(pub_addr)?);
        subscribe.add_local_candidate(host(sub_addr)?);
        Ok(Dev {
            msid: format!("cc-{}-{}", spec.idx, uuid::Uuid::new_v4().simple()),
            spec,
            dir,
            window,
            progress,
            tone,
            publish,
            subscribe,
            pub_sock,
            sub_sock,
            pub_addr,
            sub_addr,
            pub_timeout: now,
            sub_timeout: now,
            pub_connected: false,
            media_ready: false,
            audio: None,
            next_audio: now,
            audio_seq: 0,
            rpc: HashMap::new(),
            next_id: 1,
            revision: 0,
            sub_channels: false,
            sub_rtx: Vec::new(),
            mid_source: HashMap::new(),
            last_seq: HashMap::new(),
            events: Vec::new(),
            res: DevResult::default(),
        })
    }

    fn request(&mut self, method: &str, params: Value, kind: Rpc) -> String {
        let id = self.next_id;
        self.next_id += 1;
        self.rpc.insert(id, kind);
        rpc_request(id, method, params)
    }

    fn error(&mut self, what: String) {
        if self.res.errors.len() < 8 {
            self.res.errors.push(what);
        }
    }

    fn violation(&mut self, what: String) {
        self.res.violations += 1;
        if self.res.violation_examples.len() < 4 && !self.res.violation_examples.contains(&what) {
            self.res.violation_examples.push(what);
        }
    }

    /// Runs one `Rtc` until it waits.
    fn drain(&mut self, sub: bool, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        let mut send_errors = 0u64;
        let error;
        {
            let (rtc, sock) = if sub {
                (&mut self.subscribe, &self.sub_sock)
            } else {
                (&mut self.publish, &self.pub_sock)
            };
            let (timeout, failed) = rtc::drain(
                rtc,
                now,
                |t| {
                    if sock.try_send_to(&t.contents, t.destination).is_err() {
                        send_errors += 1;
                    }
                },
                &mut events,
            );
            error = failed.map(|e| e.to_string());
            if sub {
                self.sub_timeout = timeout;
            } else {
                self.pub_timeout = timeout;
            }
        }
        self.res.send_errors += send_errors;
        if let Some(e) = error {
            self.error(format!("{} poll: {e}", side(sub)));
        }
        for e in events.drain(..) {
            self.on_event(sub, e, now);
        }
        self.events = events;
    }

    fn on_event(&mut self, sub: bool, event: Event, now: Instant) {
        match event {
            Event::Connected if !sub => {
                self.pub_connected = true;
                self.update_publishing();
            }
            Event::MediaData(data) if sub => self.on_frame(&data, now),
            _ => {}
        }
    }

    fn on_frame(&mut self, data: &str0m::media::MediaData, now: Instant) {
        let in_window = self.window.contains(ns(now));
        let label = self.mid_source.get(&data.mid).copied();
        let me = self.spec.idx;
        let role = self.spec.role.name();
        let source = match read_hdr(&data.data) {
            Some(h) => {
                if label.is_some_and(|l| l != h.publisher) {
                    self.res.label_mismatches += 1;
                }
                if !self.spec.allowed.contains(&h.publisher) {
                    let what = self.describe(h.publisher);
                    self.violation(format!("{role} #{me} received a packet of {what}"));
                    return;
                }
                if self.window.contains(h.send_ns) {
                    *self.res.pairs.entry(h.publisher).or_default() += 1;
                    let lat = ns(now).saturating_sub(h.send_ns) / 1000;
                    self.res.lat_us.push(lat.min(u64::from(u32::MAX)) as u32);
                }
                h.publisher
            }
            None => {
                // No header: audio the bridge encoded, from a phone this device may hear.
                let phone = label.filter(|l| {
                    self.spec.allowed.contains(l)
                        && self.dir.specs.get(*l as usize).is_some_and(|s| s.phone)
                });
                let Some(source) = phone else {
                    let what =
                        label.map_or("an unlabelled m-line".to_owned(), |l| self.describe(l));
                    self.violation(format!(
                        "{role} #{me} received a frame without header from {what}"
                    ));
                    return;
                };
                if in_window {
                    *self.res.phone_frames_win.entry(source).or_default() += 1;
                }
                source
            }
        };
        if in_window {
            let first = **data.seq_range.start();
            let last = **data.seq_range.end();
            if let Some(prev) = self.last_seq.get(&data.mid) {
                self.res.seq_gaps += first.saturating_sub(prev + 1);
            }
            self.last_seq.insert(data.mid, last);
        }
        if self.res.heard.insert(source) {
            self.progress.heard.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn describe(&self, idx: u32) -> String {
        match self.dir.specs.get(idx as usize) {
            Some(s) => format!(
                "{} #{} of call {}{}",
                s.role.name(),
                s.idx,
                s.call,
                if s.call == self.spec.call {
                    ""
                } else {
                    " (another call)"
                }
            ),
            None => format!("unknown publisher #{idx}"),
        }
    }

    fn update_publishing(&mut self) {
        if self.pub_connected && self.media_ready {
            self.next_audio = Instant::now();
            self.progress.publishing.store(true, Ordering::Relaxed);
        }
    }

    fn on_datagram(&mut self, sub: bool, source: SocketAddr, data: &[u8], now: Instant) {
        if sub && is_rtp(data) && self.window.contains(ns(now)) {
            if self.sub_rtx.contains(&(data[1] & 0x7f)) {
                self.res.sub_rtx_win += 1;
            } else {
                self.res.sub_rtp_win += 1;
            }
        }
        let (rtc, destination) = if sub {
            (&mut self.subscribe, self.sub_addr)
        } else {
            (&mut self.publish, self.pub_addr)
        };
        match rtc::receive(rtc, source, destination, data, now) {
            Ok(()) => {}
            Err(ReceiveError::Unparsable) => return,
            Err(ReceiveError::Input(e)) => self.error(format!("{} input: {e}", side(sub))),
        }
        self.drain(sub, now);
    }

    fn tick(&mut self, now: Instant) {
        if self.pub_timeout <= now {
            if let Err(e) = self.publish.handle_input(Input::Timeout(now)) {
                self.error(format!("publish timeout: {e}"));
            }
            self.drain(false, now);
        }
        if self.sub_timeout <= now {
            if let Err(e) = self.subscribe.handle_input(Input::Timeout(now)) {
                self.error(format!("subscribe timeout: {e}"));
            }
            self.drain(true, now);
        }
        self.send_audio(now);
    }

    fn next_wakeup(&self) -> Instant {
        let t = self.pub_timeout.min(self.sub_timeout);
        if self.media_ready && self.pub_connected && self.audio.is_some() {
            t.min(self.next_audio)
        } else {
            t
        }
    }

    fn send_audio(&mut self, now: Instant) {
        if !self.media_ready || !self.pub_connected {
            return;
        }
        let Some((mid, pt)) = self.audio else {
            return;
        };
        while self.next_audio <= now {
            let lag = now - self.next_audio;
            if lag > MAX_LAG {
                let slots = lag.as_micros() / AUDIO_EVERY.as_micros();
                if self.window.contains(ns(now)) {
                    self.res.skipped += slots as u64;
                }
                self.audio_seq += slots as u32;
                self.next_audio += AUDIO_EVERY * slots as u32;
                continue;
            }
            let seq = self.audio_seq;
            let mut data = self.tone[seq as usize % self.tone.len()].clone();
            let h = Hdr {
                publisher: self.spec.idx,
                seq,
                send_ns: ns(now),
            };
            let at = data.len() - HDR_LEN;
            put_hdr(&mut data[at..], self.spec.role, &h);
            let t = MediaTime::new(u64::from(seq) * 960, Frequency::FORTY_EIGHT_KHZ);
            let written = match self.publish.writer(mid) {
                Some(w) => w.write(pt, now, t, data),
                None => return,
            };
            if let Err(e) = written {
                self.error(format!("write audio: {e}"));
            }
            self.drain(false, now);
            if self.window.contains(h.send_ns) {
                self.res.frames_win += 1;
            }
            self.audio_seq += 1;
            self.next_audio += AUDIO_EVERY;
        }
    }

    // ---- signalling (the browser SDK's sequence, as in examples/media_load.rs) ----

    fn start(&mut self) -> Vec<String> {
        vec![self.request(
            "setMediaPreferences",
            json!({"protocol": "WEBRTC"}),
            Rpc::Prefs,
        )]
    }

    fn metadata(&self, streams: Value) -> Value {
        json!({
            "mediaStreams": streams,
            "dataChannels": {
                HEARTBEAT: {"label": HEARTBEAT, "streamId": 0},
                DIAGNOSTICS: {"label": DIAGNOSTICS, "streamId": 1},
            }
        })
    }

    fn data_offer(&mut self, now: Instant) -> Result<String, String> {
        let _ = self.publish.handle_input(Input::Timeout(now));
        self.drain(false, now);
        let mut api = self.publish.sdp_api();
        api.add_channel_with_config(builtin_channel(0, HEARTBEAT));
        api.add_channel_with_config(builtin_channel(1, DIAGNOSTICS));
        let (offer, pending) = api.apply().ok_or("no data-channel offer")?;
        self.drain(false, now);
        let params =
            json!({"sdpOffer": offer.to_sdp_string(), "mediaMetadata": self.metadata(json!({}))});
        Ok(self.request("offerSdp", params, Rpc::DataOffer(pending)))
    }

    fn media_offer(&mut self, now: Instant) -> Result<String, String> {
        let mut api = self.publish.sdp_api();
        let msid = self.msid.clone();
        let a = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some(msid.clone()),
            Some(format!("{msid}-audio")),
            None,
        );
        let (offer, pending) = api.apply().ok_or("no media offer")?;
        self.drain(false, now);
        self.audio = Some((a, Pt::from(0)));
        let params = json!({
            "sdpOffer": offer.to_sdp_string(),
            "mediaMetadata": self.metadata(json!({ msid: {"alias": self.spec.role.name()} })),
        });
        Ok(self.request("offerSdp", params, Rpc::MediaOffer(pending)))
    }

    fn accept_publish_answer(
        &mut self,
        pending: SdpPendingOffer,
        result: &Value,
        now: Instant,
    ) -> Result<(), String> {
        let sdp = result["sdpAnswer"]
            .as_str()
            .ok_or("offerSdp result without sdpAnswer")?;
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("answer: {e}"))?;
        self.publish
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("accept_answer: {e}"))?;
        self.drain(false, now);
        Ok(())
    }

    fn on_ws_text(&mut self, text: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.error("unparsable frame from the server".into());
            return out;
        };
        if let Some(method) = v["method"].as_str() {
            if method == "sdpOffer" {
                match self.on_sdp_offer(&v["params"], now) {
                    Ok(Some(answer)) => out.push(answer),
                    Ok(None) => {}
                    Err(e) => self.error(format!("sdpOffer: {e}")),
                }
            }
            return out;
        }
        let Some(kind) = v["id"].as_u64().and_then(|id| self.rpc.remove(&id)) else {
            return out;
        };
        if let Some(err) = v.get("error") {
            self.error(format!("rpc error: {err}"));
            return out;
        }
        let result = &v["result"];
        let step = match kind {
            Rpc::Prefs => self.data_offer(now).map(Some),
            Rpc::DataOffer(pending) => self
                .accept_publish_answer(pending, result, now)
                .and_then(|()| self.media_offer(now))
                .map(Some),
            Rpc::MediaOffer(pending) => {
                self.accept_publish_answer(pending, result, now).map(|()| {
                    if let Some((mid, _)) = self.audio {
                        self.audio =
                            payload_type(&mut self.publish, mid, Codec::Opus).map(|pt| (mid, pt));
                    }
                    if self.audio.is_none() {
                        self.error("publish answer lacks Opus".into());
                    }
                    self.media_ready = true;
                    self.update_publishing();
                    None
                })
            }
            Rpc::Answer => Ok(None),
        };
        match step {
            Ok(Some(msg)) => out.push(msg),
            Ok(None) => {}
            Err(e) => self.error(e),
        }
        out
    }

    fn on_sdp_offer(&mut self, params: &Value, now: Instant) -> Result<Option<String>, String> {
        let revision = params["sdpRevision"].as_u64().ok_or("no sdpRevision")?;
        if revision <= self.revision {
            return Ok(None);
        }
        let sdp = params["sdpOffer"].as_str().ok_or("no sdpOffer")?;
        // Which publisher each m-line carries, as the server says.
        for (mid, msid) in mids_with_msid(sdp) {
            let who = params["streamMetadata"][&msid]["participantId"]
                .as_str()
                .and_then(|p| self.dir.by_participant.get(p).copied());
            let mid = Mid::from(mid.as_str());
            match who {
                Some(idx) => {
                    self.mid_source.insert(mid, idx);
                }
                None => {
                    self.mid_source.remove(&mid);
                }
            }
        }
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("offer: {e}"))?;
        let _ = self.subscribe.handle_input(Input::Timeout(now));
        self.drain(true, now);
        let answer = self
            .subscribe
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("accept_offer: {e}"))?;
        if !self.sub_channels {
            self.sub_channels = true;
            for (id, label) in [(0, HEARTBEAT), (1, DIAGNOSTICS)] {
                self.subscribe
                    .direct_api()
                    .create_data_channel(builtin_channel(id, label));
            }
        }
        self.drain(true, now);
        self.sub_rtx = rtx_pts(&self.subscribe);
        self.revision = revision;
        Ok(Some(self.request(
            "answerSdp",
            json!({"sdpAnswer": answer.to_sdp_string()}),
            Rpc::Answer,
        )))
    }
}

async fn run_browser(
    spec: Spec,
    dir: Arc<Directory>,
    ws_base: String,
    window: Arc<Window>,
    progress: Arc<Progress>,
    tone: Arc<Vec<Vec<u8>>>,
    mut stop: watch::Receiver<bool>,
) -> DevResult {
    let idx = spec.idx;
    let fail = |e: String| {
        progress.failed.store(true, Ordering::Relaxed);
        DevResult {
            idx,
            errors: vec![e],
            ..Default::default()
        }
    };
    let url = format!(
        "{ws_base}/v3/?token={}&client=load&sdkVersion=cc_load&uniqueId={}",
        spec.token,
        uuid::Uuid::new_v4()
    );
    let connect = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::connect_async(url),
    );
    let mut ws = match connect.await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return fail(format!("websocket: {e}")),
        Err(_) => return fail("websocket: connect timed out".into()),
    };
    let mut dev = match Dev::new(spec, dir, window, progress.clone(), tone).await {
        Ok(d) => d,
        Err(e) => return fail(format!("sockets: {e}")),
    };
    let mut pub_buf = vec![0u8; 2048];
    let mut sub_buf = vec![0u8; 2048];
    let mut outgoing = dev.start();
    loop {
        for msg in outgoing.drain(..) {
            if ws.send(Message::text(msg)).await.is_err() {
                dev.error("websocket send failed".into());
            }
        }
        let wake = dev.next_wakeup();
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => {
                let now = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => outgoing = dev.on_ws_text(t.as_str(), now),
                    Some(Ok(Message::Close(c))) => {
                        dev.error(format!("server closed the websocket: {c:?}"));
                        progress.failed.store(true, Ordering::Relaxed);
                        let _ = stop.changed().await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        dev.error(format!("websocket: {e}"));
                        break;
                    }
                    None => break,
                }
            }
            r = dev.pub_sock.recv_from(&mut pub_buf) => {
                let now = Instant::now();
                if let Ok((n, src)) = r {
                    let p = pub_buf[..n].to_vec();
                    dev.on_datagram(false, src, &p, now);
                }
            }
            r = dev.sub_sock.recv_from(&mut sub_buf) => {
                let now = Instant::now();
                if let Ok((n, src)) = r {
                    let p = sub_buf[..n].to_vec();
                    dev.on_datagram(true, src, &p, now);
                }
                // Whatever else is queued, without another trip through select!.
                for _ in 0..32 {
                    match dev.sub_sock.try_recv_from(&mut sub_buf) {
                        Ok((n, src)) => {
                            let p = sub_buf[..n].to_vec();
                            dev.on_datagram(true, src, &p, now);
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        dev.tick(Instant::now());
    }
    let leave = json!({"jsonrpc": "2.0", "method": "leave"}).to_string();
    let _ = ws.send(Message::text(leave)).await;
    let _ = ws.close(None).await;
    dev.res.idx = idx;
    dev.res
}

// ---- phones --------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PhoneResult {
    idx: u32,
    answered: bool,
    /// Samples (8 kHz) heard in the window: RTP packets × 160.
    window_samples: u64,
    /// Seconds of the whole call where the supervisor's tone was above the leak share.
    leak_seconds: u64,
    worst_leak_share: f64,
    /// Seconds of the window without the agent's tone (its share below 0.05).
    seconds_without_agent: u64,
    seconds_heard: u64,
    errors: Vec<String>,
}

/// Dials, plays the caller's tone, and at the window's edges takes what was heard.
async fn run_phone(
    spec: Spec,
    sip: SocketAddr,
    agent_hz: f64,
    supervisor_hz: f64,
    leak_share: f64,
    progress: Arc<Progress>,
    mut marks: watch::Receiver<u8>,
) -> PhoneResult {
    let mut res = PhoneResult {
        idx: spec.idx,
        ..Default::default()
    };
    // The test phone panics when the server never answers; keep that inside a task.
    let token = spec.token.clone();
    let dialled =
        tokio::spawn(async move { phone_ua::dial(sip, &phone_ua::Dial::with_token(&token)).await })
            .await;
    let phone = match dialled {
        Ok(Ok(p)) => p,
        Ok(Err(r)) => {
            progress.failed.store(true, Ordering::Relaxed);
            res.errors
                .push(format!("call refused: {} {:?}", r.code, r.reason));
            return res;
        }
        Err(e) => {
            progress.failed.store(true, Ordering::Relaxed);
            res.errors.push(format!("dial: {e}"));
            return res;
        }
    };
    res.answered = true;
    progress.publishing.store(true, Ordering::Relaxed);
    phone.play_tone(Role::Caller.tone_hz());
    // What was heard before the window and in it; marks: 1 window starts, 2 it ends, 3 stop.
    let (mut before, mut during): (Vec<i16>, Vec<i16>) = (Vec::new(), Vec::new());
    loop {
        if marks.changed().await.is_err() {
            break;
        }
        let mark = *marks.borrow();
        match mark {
            1 => {
                before = phone.heard();
                phone.clear_heard();
            }
            2 => {
                during = phone.heard();
                phone.clear_heard();
                res.window_samples = during.len() as u64;
            }
            3 => break,
            _ => {}
        }
    }
    if !phone.bye_received() {
        phone.hangup().await;
    }
    // The supervisor's tone, second by second over the whole call; the agent's in the window.
    for part in [&before, &during] {
        for second in part.chunks_exact(8000) {
            res.seconds_heard += 1;
            let sup = tone_share(second, supervisor_hz);
            res.worst_leak_share = res.worst_leak_share.max(sup);
            if sup > leak_share {
                res.leak_seconds += 1;
            }
        }
    }
    res.seconds_without_agent = during
        .chunks_exact(8000)
        .filter(|second| tone_share(second, agent_hz) < 0.05)
        .count() as u64;
    res
}

// ---- REST ----------------------------------------------------------------------------------

struct Rest {
    client: reqwest::Client,
    base: String,
    username: String,
    password: String,
}

impl Rest {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .basic_auth(&self.username, Some(&self.password));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("{method} {path}: {status} {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

// ---- main ----------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let _ = base();
    let args = Args::parse();
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("cc_load: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the load; false when a wiring violation was seen.
async fn run(args: Args) -> Result<bool, String> {
    let url = args.url.trim_end_matches('/').to_owned();
    let host = url
        .strip_prefix("http://")
        .ok_or("--url must start with http://")?;
    if !host.starts_with("127.0.0.1:") {
        return Err("--url must be http://127.0.0.1:PORT (local traffic only)".into());
    }
    if args.calls == 0 || args.phones > args.calls {
        return Err("need --calls ≥ 1 and --phones ≤ --calls".into());
    }
    let sip = match (args.phones, args.sip) {
        (0, _) => None,
        (_, Some(a)) if a.ip().is_loopback() => Some(a),
        _ => return Err("--phones needs --sip 127.0.0.1:PORT".into()),
    };
    let ticks = clock_ticks();
    let server_stat = args.server_pid.map(|p| format!("/proc/{p}/stat"));
    let server_cpu = || {
        server_stat
            .as_deref()
            .and_then(|p| stat_cpu_seconds(p, ticks))
    };
    let tool_cpu = || stat_cpu_seconds("/proc/self/stat", ticks);
    str0m::crypto::from_feature_flags().install_process_default();

    let mut tones = Vec::new();
    for role in ROLES {
        tones.push(Arc::new(tone_loop(role.tone_hz())?));
    }
    let opus_bytes: Vec<usize> = tones[0].iter().map(Vec::len).collect();
    println!(
        "cc_load: {} calls ({} with a phone caller), whisper wiring; Opus {}–{} B per 20 ms (padded, decoded back: ok); duration {:?}, warmup {:?}; loadavg {}",
        args.calls,
        args.phones,
        opus_bytes.iter().min().unwrap_or(&0),
        opus_bytes.iter().max().unwrap_or(&0),
        args.duration,
        args.warmup,
        loadavg()
    );

    // ---- REST setup: per call a session and three participants with the whisper wiring.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .map_err(|e| e.to_string())?;
    let rest = Rest {
        client: client.clone(),
        base: format!("{url}/v1/accounts/{}", args.account),
        username: args.username.clone(),
        password: args.password.clone(),
    };
    let setup_started = Instant::now();
    let mut sessions = Vec::new();
    let mut specs: Vec<Spec> = Vec::new();
    let first_browser_caller = args.phones; // call index
    for call in 0..args.calls {
        let v = rest
            .call(
                reqwest::Method::POST,
                "/sessions",
                Some(json!({"tag": format!("cc-load-{call}")})),
            )
            .await?;
        let sid = v["id"].as_str().ok_or("session without id")?.to_owned();
        let base_idx = specs.len() as u32;
        for role in ROLES {
            let v = rest
                .call(
                    reqwest::Method::POST,
                    "/participants",
                    Some(json!({
                        "publishPermissions": ["AUDIO"],
                        "tag": format!("cc-{call}-{}", role.name()),
                        "deviceApiVersion": "V3",
                    })),
                )
                .await?;
            let mut allowed: Vec<u32> = role
                .hears()
                .iter()
                .map(|r| base_idx + r.index() as u32)
                .collect();
            let miswired =
                args.miswire && role == Role::Caller && (call == 0 || call == first_browser_caller);
            if miswired {
                allowed.push(base_idx + Role::Supervisor.index() as u32);
            }
            specs.push(Spec {
                idx: specs.len() as u32,
                call,
                role,
                phone: role == Role::Caller && call < args.phones,
                participant: v["participant"]["id"]
                    .as_str()
                    .ok_or("participant without id")?
                    .to_owned(),
                token: v["token"].as_str().ok_or("no token")?.to_owned(),
                allowed,
            });
        }
        for role in ROLES {
            let me = &specs[base_idx as usize + role.index()];
            // The miswired caller's device must still treat the supervisor as forbidden.
            let subscribed: Vec<Value> = me
                .allowed
                .iter()
                .map(|&i| json!({"participantId": specs[i as usize].participant}))
                .collect();
            rest.call(
                reqwest::Method::PUT,
                &format!("/sessions/{sid}/participants/{}", me.participant),
                Some(json!({ "participants": subscribed })),
            )
            .await?;
        }
        if args.miswire {
            // The devices check against the true whisper wiring.
            for role in ROLES {
                let s = &mut specs[base_idx as usize + role.index()];
                s.allowed = role
                    .hears()
                    .iter()
                    .map(|r| base_idx + r.index() as u32)
                    .collect();
            }
        }
        sessions.push(sid);
    }
    println!(
        "REST setup: {} sessions, {} participants in {:.2}s",
        sessions.len(),
        specs.len(),
        setup_started.elapsed().as_secs_f64()
    );
    let dir = Arc::new(Directory {
        by_participant: specs
            .iter()
            .map(|s| (s.participant.clone(), s.idx))
            .collect(),
        specs: specs.clone(),
    });

    // ---- devices and phones
    let ws_base = format!("ws://{host}");
    let window = Arc::new(Window {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (marks_tx, marks_rx) = watch::channel(0u8);
    let progress: Vec<Arc<Progress>> = specs.iter().map(|_| Arc::default()).collect();
    let connect_started = Instant::now();
    let mut browsers = Vec::new();
    let mut phones = Vec::new();
    for (spec, p) in specs.iter().zip(&progress) {
        if spec.phone {
            let Some(sip) = sip else { continue };
            phones.push(tokio::spawn(run_phone(
                spec.clone(),
                sip,
                Role::Agent.tone_hz(),
                Role::Supervisor.tone_hz(),
                args.leak_share,
                p.clone(),
                marks_rx.clone(),
            )));
        } else {
            browsers.push(tokio::spawn(run_browser(
                spec.clone(),
                dir.clone(),
                ws_base.clone(),
                window.clone(),
                p.clone(),
                tones[spec.role.index()].clone(),
                stop_rx.clone(),
            )));
        }
    }
    let mut ready = false;
    let mut last_print = Instant::now();
    while connect_started.elapsed() < args.setup_timeout {
        let publishing = progress
            .iter()
            .filter(|p| p.publishing.load(Ordering::Relaxed))
            .count();
        let hearing = specs
            .iter()
            .zip(&progress)
            .filter(|(s, p)| {
                s.phone || p.heard.load(Ordering::Relaxed) as usize >= s.role.hears().len()
            })
            .count();
        let failed = progress
            .iter()
            .filter(|p| p.failed.load(Ordering::Relaxed))
            .count();
        if publishing == specs.len() && hearing == specs.len() {
            ready = true;
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "  … {:.1}s: {publishing}/{} publishing or answered, {hearing}/{} hear all their sources, {failed} failed",
                connect_started.elapsed().as_secs_f64(),
                specs.len(),
                specs.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup_s = connect_started.elapsed().as_secs_f64();
    if ready {
        println!("all devices publishing and hearing their sources after {setup_s:.2}s");
    } else {
        println!("WARNING: not every device was up and hearing its sources after {setup_s:.1}s; measuring anyway");
    }

    // ---- measured window
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    window.start.store(ns(start), Ordering::Relaxed);
    window.end.store(ns(end), Ordering::Relaxed);
    tokio::time::sleep_until(start.into()).await;
    let _ = marks_tx.send(1);
    let (srv0, tool0, m0) = (server_cpu(), tool_cpu(), scrape(&client, &url).await);
    let load0 = loadavg();
    tokio::time::sleep_until(end.into()).await;
    let _ = marks_tx.send(2);
    let (srv1, tool1, m1) = (server_cpu(), tool_cpu(), scrape(&client, &url).await);
    let load1 = loadavg();
    let rss = args.server_pid.and_then(rss_mb);
    tokio::time::sleep(Duration::from_millis(1000)).await; // frames in flight
    let _ = stop_tx.send(true);
    let _ = marks_tx.send(3);
    let mut results = Vec::new();
    for t in browsers {
        results.push(t.await.map_err(|e| format!("device task: {e}"))?);
    }
    let mut phone_results = Vec::new();
    for t in phones {
        phone_results.push(t.await.map_err(|e| format!("phone task: {e}"))?);
    }
    for sid in &sessions {
        let _ = rest
            .call(reqwest::Method::DELETE, &format!("/sessions/{sid}"), None)
            .await;
    }
    for spec in &specs {
        let _ = rest
            .call(
                reqwest::Method::DELETE,
                &format!("/participants/{}", spec.participant),
                None,
            )
            .await;
    }

    // ---- report
    let secs = args.duration.as_secs_f64();
    let by_idx: HashMap<u32, &DevResult> = results.iter().map(|r| (r.idx, r)).collect();
    let (mut expected, mut received) = (0u64, 0u64);
    let mut dead_pairs = 0u64;
    let mut phone_src_frames = 0u64;
    let mut phone_src_pairs = 0u64;
    for sub in specs.iter().filter(|s| !s.phone) {
        let sr = by_idx.get(&sub.idx);
        for &p in &sub.allowed {
            let publ = &specs[p as usize];
            if publ.phone {
                phone_src_pairs += 1;
                phone_src_frames += sr
                    .and_then(|r| r.phone_frames_win.get(&p))
                    .copied()
                    .unwrap_or(0);
                continue;
            }
            let sent = by_idx.get(&p).map_or(0, |r| r.frames_win);
            let got = sr
                .and_then(|r| r.pairs.get(&p))
                .copied()
                .unwrap_or(0)
                .min(sent);
            expected += sent;
            received += got;
            if sent > 0 && got == 0 {
                dead_pairs += 1;
            }
        }
    }
    let sum = |f: fn(&DevResult) -> u64| results.iter().map(f).sum::<u64>();
    let browser_lost = expected - received;
    let seq_gaps = sum(|r| r.seq_gaps);
    let phone_expected_pkts = (FRAMES_PER_SECOND * secs) as u64;
    let phone_pkts: u64 = phone_results.iter().map(|p| p.window_samples / 160).sum();
    let phone_short: u64 = phone_results
        .iter()
        .map(|p| {
            phone_expected_pkts
                .saturating_sub(PHONE_EDGE_TOLERANCE)
                .saturating_sub(p.window_samples / 160)
        })
        .sum();
    let counters = m0.zip(m1).map(|(a, b)| Counters {
        forwarded: b.forwarded - a.forwarded,
        forward_failures: b.forward_failures - a.forward_failures,
        underruns_uplink: b.underruns_uplink - a.underruns_uplink,
        underruns_downlink: b.underruns_downlink - a.underruns_downlink,
    });
    let violations =
        sum(|r| r.violations) + phone_results.iter().map(|p| p.leak_seconds).sum::<u64>();
    let mut violation_examples: Vec<String> = results
        .iter()
        .flat_map(|r| r.violation_examples.iter().cloned())
        .take(6)
        .collect();
    for p in phone_results.iter().filter(|p| p.leak_seconds > 0) {
        let s = &specs[p.idx as usize];
        violation_examples.push(format!(
            "phone caller #{} of call {} heard its supervisor's tone in {} of {} seconds (share up to {:.3})",
            s.idx, s.call, p.leak_seconds, p.seconds_heard, p.worst_leak_share
        ));
    }
    let errors: Vec<String> = results
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| format!("#{}: {e}", r.idx)))
        .chain(phone_results.iter().flat_map(|p| {
            p.errors
                .iter()
                .map(move |e| format!("phone #{}: {e}", p.idx))
        }))
        .take(20)
        .collect();
    let unanswered = phone_results.iter().filter(|p| !p.answered).count();
    let server_cpu_s = srv0.zip(srv1).map(|(a, b)| b - a);
    let tool_cpu_s = tool0.zip(tool1).map(|(a, b)| b - a);
    let received_pkts = sum(|r| r.sub_rtp_win) + phone_pkts;
    let mut lat = Vec::new();
    for r in &results {
        lat.extend_from_slice(&r.lat_us);
    }
    let underruns = counters.map(|c| c.underruns_uplink + c.underruns_downlink);
    let fwd_failures = counters.map(|c| c.forward_failures);
    // A run where the tool could not offer the whole load (it skipped send slots) proves
    // nothing about that call count.
    let zero_loss = ready
        && sum(|r| r.skipped) == 0
        && errors.is_empty()
        && unanswered == 0
        && browser_lost == 0
        && seq_gaps == 0
        && phone_short == 0
        && underruns == Some(0.0)
        && fwd_failures == Some(0.0);
    let v = json!({
        "label": args.label,
        "calls": args.calls,
        "phone_callers": args.phones,
        "duration_s": secs,
        "ready": ready,
        "setup_s": round(setup_s, 2),
        "zero_loss": zero_loss,
        "wiring_violations": violations,
        "violation_examples": violation_examples,
        "browser_frames": {"expected": expected, "received": received, "lost": browser_lost, "dead_pairs": dead_pairs},
        "browser_loss_pct": round(ratio(browser_lost as f64, expected as f64) * 100.0, 3),
        "rtp_seq_gaps": seq_gaps,
        "phone_audio_at_browsers": {"pairs": phone_src_pairs, "frames": phone_src_frames,
            "per_pair_per_s": round(ratio(phone_src_frames as f64, phone_src_pairs as f64 * secs), 2)},
        "phones": {"answered": phone_results.len() - unanswered, "unanswered": unanswered,
            "pkts_received": phone_pkts, "expected_each": phone_expected_pkts, "pkts_short": phone_short,
            "seconds_without_agent_tone": phone_results.iter().map(|p| p.seconds_without_agent).sum::<u64>(),
            "worst_supervisor_share": round(phone_results.iter().map(|p| p.worst_leak_share).fold(0.0, f64::max), 4)},
        "server": counters.map(|c| json!({
            "forwarded_pkts": c.forwarded, "forward_failures": c.forward_failures,
            "underruns_uplink": c.underruns_uplink, "underruns_downlink": c.underruns_downlink})),
        "received_pkts": received_pkts,
        "received_pps": round(received_pkts as f64 / secs, 1),
        "label_mismatches": sum(|r| r.label_mismatches),
        "latency_audio_browser_to_browser": percentiles(lat),
        "server_cpu_s": server_cpu_s.map(|c| round(c, 2)),
        "server_cpu_pct": server_cpu_s.map(|c| round(c / secs * 100.0, 1)),
        "received_pkts_per_server_cpu_s": server_cpu_s.map(|c| round(ratio(received_pkts as f64, c), 0)),
        "server_fwd_pkts_per_server_cpu_s": server_cpu_s.zip(counters).map(|(c, k)| round(ratio(k.forwarded, c), 0)),
        "server_rss_mb": rss.map(|r| round(r, 1)),
        "tool_cpu_s": tool_cpu_s.map(|c| round(c, 2)),
        "tool_skipped_slots": sum(|r| r.skipped),
        "send_errors": sum(|r| r.send_errors),
        "errors": errors,
        "loadavg_window": [load0, load1],
    });
    println!("--- measured {secs:.0}s");
    println!(
        "browser → browser frames {received}/{expected} (lost {browser_lost}, {dead_pairs} dead pairs); RTP sequence gaps {seq_gaps}; phone audio at browsers {:.1} frames/s per pair ({phone_src_pairs} pairs)",
        ratio(phone_src_frames as f64, phone_src_pairs as f64 * secs)
    );
    println!(
        "phones: {} answered, {unanswered} not; received {phone_pkts} RTP pkts ({} short of 50/s); server counters {}",
        phone_results.len() - unanswered,
        phone_short,
        v["server"]
    );
    println!(
        "latency browser → browser: {}; server CPU {} s ({} %), RSS {} MB; received pkts per server CPU-s {}, server-counted forwarded per CPU-s {}; tool CPU {} s",
        v["latency_audio_browser_to_browser"],
        v["server_cpu_s"],
        v["server_cpu_pct"],
        v["server_rss_mb"],
        v["received_pkts_per_server_cpu_s"],
        v["server_fwd_pkts_per_server_cpu_s"],
        v["tool_cpu_s"]
    );
    println!(
        "wiring violations: {violations} {}; zero loss: {zero_loss}; errors {}",
        v["violation_examples"], v["errors"]
    );
    if v["tool_skipped_slots"].as_u64().unwrap_or(0) > 0 {
        println!(
            "WARNING: the tool fell behind its own send schedule ({} frame slots skipped): these figures are bounded by the load tool, not the server",
            v["tool_skipped_slots"]
        );
    }
    println!("RESULT {v}");
    Ok(violations == 0)
}
