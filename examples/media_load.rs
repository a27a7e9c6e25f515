//! Media load generator for a running patchbay (or Janus) server, with a raw UDP relay as the
//! ceiling.
//!
//! Phase 1 (patchbay): creates `--sessions` × `--participants` participants over REST (the
//! dev account, HTTP Basic), adds each to its session with a session-wide subscription
//! (`{"sessionId": S}`), and runs one synthetic device per participant: a JSON-RPC WebSocket
//! to `/v3/` speaking protocol v3 like the browser SDK (setMediaPreferences; `offerSdp` with a
//! data-channel-only offer, then a second one adding audio+video sendonly with
//! `mediaMetadata.mediaStreams {<msid>: {alias: "cam"}}`; every `sdpOffer` notification is
//! answered with `answerSdp`), plus two str0m client `Rtc`s (publish, subscribe; non-lite),
//! each on its own UDP socket on 127.0.0.1, pumped by this tool.
//!
//! Publishers write pre-built synthetic frames in str0m frame mode: Opus-sized audio
//! (60–120 bytes, 50/s) and VP8 video (`--fps` frames/s of `--video-frame-bytes`, split by
//! str0m's packetizer into several RTP packets, with a larger keyframe every
//! `--keyframe-interval` and on PLI/FIR). The VP8 frames start with a valid VP8 frame tag
//! (P bit, version 0, show_frame, first-partition size) and, for keyframes, the start code
//! `9d 01 2a` and 640×480: str0m's VP8 path only reads the payload descriptor it writes
//! itself and the P bit, so this is enough to pass the SFU's depacketize/repacketize (and
//! `MediaData::is_keyframe` follows the P bit). Every frame carries a header (magic, publisher
//! index, kind, sequence, send time in ns since the tool's start) so subscribers compute the
//! one-way added latency (same host clock) and per-(publisher, subscriber) loss.
//!
//! A few "late" participants join with no subscription; once media flows, the tool PUTs a
//! session-wide subscription for them and times PUT → first frame from each publisher.
//!
//! Phase 2 (raw relay, same run): a thread with one UDP socket doing `recv_from` + `send_to`
//! to each of the other members of the sender's session (no SRTP, no parsing), driven by the
//! same packet pattern (packet counts per frame as str0m produced in phase 1). Its CPU time
//! comes from `/proc/thread-self/schedstat`.
//!
//! Counting: "forwarded" packets are SRTP datagrams carrying RTP received on the subscribe
//! sockets within the measured window (RTX counted separately); the server's CPU time is
//! utime+stime of `/proc/<server-pid>/stat` over the same window.
//!
//! ```text
//! cargo run --release --example media_load -- --url http://127.0.0.1:PORT \
//!     --username U --password P --server-pid PID --sessions 1 --participants 20
//! ```
//!
//! `--tcp`: every device's two `Rtc`s use ICE over TCP instead of UDP (an active TCP
//! candidate; one TCP connection per `Rtc` to the passive candidate the server's SDP names,
//! RFC 4571 framing), so the server's ICE-TCP path carries all media (issue #11).
//!
//! `--server janus --url ws://127.0.0.1:PORT`: the same devices, traffic and counting against
//! Janus's VideoRoom plugin instead (signalled through the Janus API over WebSocket; see
//! `support/janus.rs`: one room per session created by the tool, one publisher handle and one
//! multistream subscriber handle per device); the figures come out under `"janus"` instead of
//! `"patchbay"` in the RESULT line (`"server"` names which). `benches/media_load.sh` runs the
//! two side by side.
//!
//! `--media-ip`: the local address every media socket of the tool (devices and raw relay)
//! binds to, 127.0.0.1 by default; the bench uses a veth address inside a network namespace
//! because Janus never gathers loopback candidates. The server's RSS (VmRSS, VmHWM of
//! `--server-pid`) is read at the end of the measured window.
//!
//! Output: human-readable lines, then one line `RESULT {json}`. `--url` must be on 127.0.0.1
//! and `--media-ip` an address of this host (others are refused); media goes to the addresses
//! the server's SDP names.
#![allow(clippy::disallowed_methods)] // a load generator: real clocks, tasks and threads

#[path = "support/janus.rs"]
mod janus;
#[path = "support/load.rs"]
mod load;
#[path = "support/mod.rs"]
mod support;
use load::{clock_ticks, is_rtp, loadavg, ratio, round, rpc_request, rtx_pts, stat_cpu_seconds};
use support::parse_duration;

use patchbay_testkit::rtc::{self, builtin_channel, payload_type, side, ReceiveError};

use std::collections::HashMap;
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

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Patchbay,
    Janus,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Patchbay => "patchbay",
            Server::Janus => "janus",
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Media load generator for patchbay or Janus, with a raw UDP relay as the ceiling"
)]
struct Args {
    /// Which server `--url` is: `patchbay` (its REST API and signalling v3) or `janus` (the
    /// Janus API over WebSocket, VideoRoom plugin; see the `janus` module).
    #[arg(long, value_enum, default_value_t = Server::Patchbay)]
    server: Server,
    /// Base URL of the running server; must be http://127.0.0.1:PORT (patchbay) or
    /// ws://127.0.0.1:PORT (Janus's WebSocket transport).
    #[arg(long)]
    url: String,
    #[arg(long, default_value = "dev")]
    account: String,
    /// patchbay's dev account credentials (HTTP Basic); unused with `--server janus`.
    #[arg(long, default_value = "")]
    username: String,
    #[arg(long, default_value = "")]
    password: String,
    /// The local address the tool's media sockets (devices and raw relay) bind to: 127.0.0.1,
    /// or an address of this host (the bench runs both servers inside a network namespace on a
    /// veth address, because Janus never gathers loopback candidates). Must be bindable here.
    #[arg(long, default_value = "127.0.0.1")]
    media_ip: std::net::IpAddr,
    /// Number of sessions.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Participants per session (at most 20).
    #[arg(long, default_value_t = 20)]
    participants: usize,
    /// Participants per session that publish video too (the first K); default: all.
    #[arg(long)]
    video_publishers: Option<usize>,
    /// Participants (in total, spread over sessions) that join without a subscription and
    /// get one once media flows: measures subscription PUT → first media.
    #[arg(long, default_value_t = 3)]
    late: usize,
    /// Measured duration of the patchbay phase, e.g. 20s.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured time between "media flows everywhere" and the measured window.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Give up waiting for every device to connect and hear everyone after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    setup_timeout: Duration,
    /// Measured duration of the raw relay phase (0 skips it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    relay_duration: Duration,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Size of a video delta frame (bytes).
    #[arg(long, default_value_t = 4000)]
    video_frame_bytes: usize,
    /// Size of a video keyframe (bytes).
    #[arg(long, default_value_t = 12000)]
    keyframe_bytes: usize,
    /// Periodic keyframe interval (keyframe requests from the server force one sooner).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    keyframe_interval: Duration,
    /// Smallest audio frame (bytes); sizes cycle up to --audio-max-bytes.
    #[arg(long, default_value_t = 60)]
    audio_min_bytes: usize,
    #[arg(long, default_value_t = 120)]
    audio_max_bytes: usize,
    /// Server process id: its CPU time over the measured window (from /proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free-form label copied into the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
    /// Exit non-zero unless every device connected, every (publisher, subscriber) pair received
    /// media, every late subscriber got media after its PUT, and no client error occurred: the
    /// end-to-end check CI runs with a few participants.
    #[arg(long)]
    check: bool,
    /// Devices connect and publish before their participants join a session (a lobby): the
    /// server must move each device to the shard of the session it then joins.
    #[arg(long)]
    lobby: bool,
    /// Devices use ICE over TCP (the server's passive TCP candidates) instead of UDP.
    #[arg(long)]
    tcp: bool,
    /// Idle devices: each connects (WebSocket, the data-channel-only publish connection, its
    /// subscribe connection) and publishes nothing; the tool reports the server's RSS before
    /// the devices and with all of them connected (`IDLE` line and `RESULT`), then exits.
    #[arg(long)]
    idle: bool,
}

// ---- clock, payload header ----------------------------------------------------------------

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the tool started (never 0 after the first microsecond).
fn ns(t: Instant) -> u64 {
    t.saturating_duration_since(base()).as_nanos() as u64
}

const MAGIC: [u8; 4] = *b"PBLD";
const HDR_LEN: usize = 22;
/// Audio: one Opus TOC byte, then the header.
const AUDIO_HDR_OFF: usize = 1;
/// Video: the 10-byte VP8 keyframe header (or 3-byte tag + 7 zero bytes), then the header.
const VIDEO_HDR_OFF: usize = 10;
const AUDIO: usize = 0;
const VIDEO: usize = 1;
const KIND_NAMES: [&str; 2] = ["audio", "video"];
/// Bytes a str0m RTP packet adds around a payload (RTP header, extensions, SRTP tag),
/// roughly; used to size the raw relay's packets.
const RTP_OVERHEAD: usize = 40;
const HEARTBEAT: &str = "__heartbeat__";
const DIAGNOSTICS: &str = "__diagnostics__";

#[derive(Debug, Clone, Copy)]
struct Hdr {
    publisher: u32,
    kind: u8,
    key: bool,
    seq: u32,
    send_ns: u64,
}

fn put_hdr(buf: &mut [u8], h: &Hdr) {
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&h.publisher.to_be_bytes());
    buf[8] = h.kind;
    buf[9] = u8::from(h.key);
    buf[10..14].copy_from_slice(&h.seq.to_be_bytes());
    buf[14..22].copy_from_slice(&h.send_ns.to_be_bytes());
}

fn read_hdr(buf: &[u8]) -> Option<Hdr> {
    if buf.len() < HDR_LEN || buf[..4] != MAGIC {
        return None;
    }
    let kind = buf[8];
    if kind > 1 {
        return None;
    }
    Some(Hdr {
        publisher: u32::from_be_bytes(buf[4..8].try_into().ok()?),
        kind,
        key: buf[9] != 0,
        seq: u32::from_be_bytes(buf[10..14].try_into().ok()?),
        send_ns: u64::from_be_bytes(buf[14..22].try_into().ok()?),
    })
}

/// The header of a synthetic frame (audio or video layout).
fn frame_hdr(data: &[u8]) -> Option<Hdr> {
    data.get(AUDIO_HDR_OFF..)
        .and_then(read_hdr)
        .filter(|h| h.kind as usize == AUDIO)
        .or_else(|| {
            data.get(VIDEO_HDR_OFF..)
                .and_then(read_hdr)
                .filter(|h| h.kind as usize == VIDEO)
        })
}

fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A VP8 frame template: frame tag (P bit, version 0, show_frame, first partition size) and,
/// for keyframes, the start code and 640×480; the rest is filler.
fn vp8_template(len: usize, key: bool, seed: u64) -> Vec<u8> {
    let len = len.max(VIDEO_HDR_OFF + HDR_LEN);
    let mut v = filler(len, seed);
    let first_part = (len as u32 / 4).min(0x7FFFF);
    let tag: u32 = (first_part << 5) | (1 << 4) | u32::from(!key);
    v[..3].copy_from_slice(&tag.to_le_bytes()[..3]);
    if key {
        v[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        v[6..8].copy_from_slice(&640u16.to_le_bytes());
        v[8..10].copy_from_slice(&480u16.to_le_bytes());
    } else {
        v[3..10].fill(0);
    }
    v
}

// ---- /proc ---------------------------------------------------------------------------------

/// CPU time of the calling thread in seconds (ns resolution).
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`).
fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Host-wide UDP receive-buffer overflows (`RcvbufErrors` in /proc/net/snmp).
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn pct_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
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
    /// Publish connection up and its media m-lines negotiated.
    publishing: AtomicBool,
    /// Distinct publishers heard on the subscribe connection.
    heard: AtomicU32,
    /// Janus only: the server reported the publisher's PeerConnection up (`webrtcup`); until
    /// then VideoRoom refuses subscriptions to its feed ("No such feed").
    server_up: AtomicBool,
    failed: AtomicBool,
}

#[derive(Debug, Clone)]
struct Pattern {
    fps: u32,
    video_frame_bytes: usize,
    keyframe_bytes: usize,
    keyframe_interval: Duration,
    audio_min: usize,
    audio_max: usize,
    /// ICE over TCP instead of UDP (`--tcp`).
    tcp: bool,
    /// Publish nothing after the data-channel offer (`--idle`).
    idle: bool,
}

impl Pattern {
    fn audio_len(&self, seq: u32) -> usize {
        let span = self.audio_max.saturating_sub(self.audio_min) + 1;
        (self.audio_min + (seq as usize * 37) % span).max(AUDIO_HDR_OFF + HDR_LEN)
    }
    fn video_every(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps.max(1)))
    }
}

const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// A publisher further behind its schedule than this skips frames instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
struct Spec {
    idx: u32,
    session: usize,
    participant: String,
    token: String,
    video: bool,
    late: bool,
}

// ---- phase 1: synthetic devices ------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct Pair {
    frames: [u64; 2],
    pkts: [u64; 2],
}

#[derive(Debug, Default)]
struct DevResult {
    idx: u32,
    /// In-window frames written, per kind.
    frames_win: [u64; 2],
    /// RTP datagrams sent / RTX among them, on the publish socket, in the window.
    pub_rtp_win: u64,
    pub_rtx_win: u64,
    pub_bytes_win: u64,
    /// RTP datagrams sent on the publish socket in the window, per kind (RTX excluded).
    pub_kind_win: [u64; 2],
    /// RTP datagrams received / RTX among them, on the subscribe socket, in the window.
    sub_rtp_win: u64,
    sub_rtx_win: u64,
    sub_bytes_win: u64,
    /// Schedule slots skipped because the tool fell behind by more than MAX_LAG.
    skipped: u64,
    /// Worst lateness of a write against its schedule, in the window (µs).
    max_lag_us: u64,
    pairs: HashMap<u32, Pair>,
    lat_us: [Vec<u32>; 2],
    first_media: HashMap<u32, Instant>,
    first_offer: Option<Instant>,
    sub_connected: Option<Instant>,
    offers: u64,
    keyframe_requests: u64,
    keyframes_sent: u64,
    /// Packets per received video frame as the server packetized them: (delta, key), last seen.
    video_pkts: (u32, u32),
    foreign: u64,
    send_errors: u64,
    rpc_errors: Vec<String>,
    rtc_errors: Vec<String>,
    stale_revisions: u64,
}

enum Rpc {
    Prefs,
    DataOffer(SdpPendingOffer),
    MediaOffer(SdpPendingOffer),
    Answer,
}

/// The address an active TCP candidate stands for (RFC 6544: port 9, the discard port).
const ACTIVE_TCP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

/// How one `Rtc` of a device reaches the server: its own UDP socket, or (`--tcp`) a TCP
/// connection to the server's passive candidate, opened once the SDP names it.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpLink),
}

#[derive(Default)]
struct TcpLink {
    stream: Option<tokio::net::TcpStream>,
    remote: Option<SocketAddr>,
    /// Bytes read and not yet a whole frame.
    inbuf: Vec<u8>,
    /// Framed bytes not yet written.
    outbuf: Vec<u8>,
}

impl Link {
    /// Queues or sends one packet; false when it could not be.
    fn send(&mut self, t: &str0m::net::Transmit) -> bool {
        match self {
            Link::Udp(sock) => sock.try_send_to(&t.contents, t.destination).is_ok(),
            Link::Tcp(l) => {
                if l.stream.is_none() || Some(t.destination) != l.remote {
                    return false;
                }
                let Ok(len) = u16::try_from(t.contents.len()) else {
                    return false;
                };
                l.outbuf.extend_from_slice(&len.to_be_bytes());
                l.outbuf.extend_from_slice(&t.contents);
                true
            }
        }
    }

    /// Writes what the socket takes now of the queued frames.
    fn flush(&mut self) {
        if let Link::Tcp(TcpLink {
            stream: Some(stream),
            outbuf,
            ..
        }) = self
        {
            while !outbuf.is_empty() {
                match stream.try_write(outbuf) {
                    Ok(n) => {
                        outbuf.drain(..n);
                    }
                    Err(_) => break,
                }
            }
        }
    }

    /// Opens the TCP connection to the passive candidate in `sdp`, once.
    fn connect_from_sdp(&mut self, sdp: &str) -> Result<(), String> {
        let Link::Tcp(l) = self else {
            return Ok(());
        };
        if l.stream.is_some() {
            return Ok(());
        }
        let remote = passive_candidate(sdp).ok_or("no passive TCP candidate in the SDP")?;
        // Loopback only: the blocking connect returns at once.
        let stream = std::net::TcpStream::connect(remote)
            .map_err(|e| format!("tcp connect {remote}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        l.stream = Some(tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?);
        l.remote = Some(remote);
        Ok(())
    }

    /// The next packets from the server: one datagram, or the whole frames one read gave
    /// (also writes queued frames when the socket takes them; then possibly none).
    async fn recv(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<(SocketAddr, Vec<u8>)>,
    ) -> std::io::Result<()> {
        match self {
            Link::Udp(sock) => {
                let (n, src) = sock.recv_from(buf).await?;
                out.push((src, buf[..n].to_vec()));
                for _ in 0..64 {
                    match sock.try_recv_from(buf) {
                        Ok((n, src)) => out.push((src, buf[..n].to_vec())),
                        Err(_) => break,
                    }
                }
                Ok(())
            }
            Link::Tcp(l) => {
                let (Some(stream), Some(remote)) = (&l.stream, l.remote) else {
                    return std::future::pending().await;
                };
                let pending = !l.outbuf.is_empty();
                tokio::select! {
                    r = stream.readable() => r?,
                    r = stream.writable(), if pending => { r?; return Ok(()); }
                }
                match stream.try_read(buf) {
                    Ok(0) => {
                        l.stream = None;
                        return Err(std::io::Error::other("closed by the server"));
                    }
                    Ok(n) => l.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => {
                        l.stream = None;
                        return Err(e);
                    }
                }
                while l.inbuf.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([l.inbuf[0], l.inbuf[1]]));
                    if l.inbuf.len() < 2 + len {
                        break;
                    }
                    out.push((remote, l.inbuf[2..2 + len].to_vec()));
                    l.inbuf.drain(..2 + len);
                }
                Ok(())
            }
        }
    }

    fn protocol(&self) -> str0m::net::Protocol {
        match self {
            Link::Udp(_) => str0m::net::Protocol::Udp,
            Link::Tcp(_) => str0m::net::Protocol::Tcp,
        }
    }
}

/// The address of the first passive TCP host candidate in `sdp`.
fn passive_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines().find_map(|line| {
        let c = line.strip_prefix("a=candidate:")?;
        let f: Vec<&str> = c.split_whitespace().collect();
        let passive = f.windows(2).any(|w| w == ["tcptype", "passive"]);
        if f.get(2)?.eq_ignore_ascii_case("tcp") && passive {
            format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()
        } else {
            None
        }
    })
}

struct Dev {
    spec: Spec,
    window: Arc<Window>,
    progress: Arc<Progress>,
    pattern: Pattern,
    publish: Rtc,
    subscribe: Rtc,
    pub_sock: Link,
    sub_sock: Link,
    pub_addr: SocketAddr,
    sub_addr: SocketAddr,
    pub_timeout: Instant,
    sub_timeout: Instant,
    pub_connected: bool,
    media_ready: bool,
    msid: String,
    audio: Option<(Mid, Pt)>,
    video: Option<(Mid, Pt)>,
    next_audio: Instant,
    next_video: Instant,
    audio_seq: u32,
    video_seq: u32,
    last_key: Option<Instant>,
    force_key: bool,
    audio_tpl: Vec<u8>,
    delta_tpl: Vec<u8>,
    key_tpl: Vec<u8>,
    rpc: HashMap<u64, Rpc>,
    next_id: u64,
    revision: u64,
    sub_channels: bool,
    pub_rtx: Vec<u8>,
    sub_rtx: Vec<u8>,
    events: Vec<Event>,
    res: DevResult,
}

impl Dev {
    async fn new(
        spec: Spec,
        window: Arc<Window>,
        progress: Arc<Progress>,
        pattern: Pattern,
        tcp: bool,
        media_ip: std::net::IpAddr,
    ) -> std::io::Result<Dev> {
        let now = Instant::now();
        let (pub_sock, sub_sock, pub_addr, sub_addr) = if tcp {
            let link = || Link::Tcp(TcpLink::default());
            (link(), link(), ACTIVE_TCP, ACTIVE_TCP)
        } else {
            let pub_sock = UdpSocket::bind((media_ip, 0)).await?;
            let sub_sock = UdpSocket::bind((media_ip, 0)).await?;
            let (pub_addr, sub_addr) = (pub_sock.local_addr()?, sub_sock.local_addr()?);
            (Link::Udp(pub_sock), Link::Udp(sub_sock), pub_addr, sub_addr)
        };
        let config = || {
            Rtc::builder()
                .clear_codecs()
                .enable_opus(true, false)
                .enable_vp8(true)
        };
        let mut publish = config().build(now);
        // No audio hold-back on the receiving side: a lost packet must not delay the next
        // frames here (str0m holds up to 15 packets by default), so the latency measured is
        // the server's.
        let mut subscribe = config().set_reordering_size_audio(0).build(now);
        let host = |a| {
            let c = if tcp {
                Candidate::builder()
                    .tcp()
                    .host(a)
                    .tcptype(str0m::net::TcpType::Active)
                    .build()
            } else {
                Candidate::host(a, "udp")
            };
            c.map_err(|e| std::io::Error::other(e.to_string()))
        };
        publish.add_local_candidate(host(pub_addr)?);
        subscribe.add_local_candidate(host(sub_addr)?);
        let seed = u64::from(spec.idx) * 7919 + 17;
        let mut audio_tpl = filler(pattern.audio_max.max(AUDIO_HDR_OFF + HDR_LEN), seed);
        audio_tpl[0] = 0x78; // Opus TOC: SILK wideband, 20 ms, mono, one frame
        Ok(Dev {
            msid: format!("load-{}-{}", spec.idx, uuid::Uuid::new_v4().simple()),
            delta_tpl: vp8_template(pattern.video_frame_bytes, false, seed + 1),
            key_tpl: vp8_template(pattern.keyframe_bytes, true, seed + 2),
            audio_tpl,
            spec,
            window,
            progress,
            pattern,
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
            video: None,
            next_audio: now,
            next_video: now,
            audio_seq: 0,
            video_seq: 0,
            last_key: None,
            force_key: true,
            rpc: HashMap::new(),
            next_id: 1,
            revision: 0,
            sub_channels: false,
            pub_rtx: Vec::new(),
            sub_rtx: Vec::new(),
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

    fn rtc_error(&mut self, what: String) {
        if self.res.rtc_errors.len() < 8 {
            self.res.rtc_errors.push(what);
        }
    }

    /// Runs one `Rtc` to completion.
    fn drain(&mut self, sub: bool, now: Instant) {
        let mut events = std::mem::take(&mut self.events);
        let in_window = self.window.contains(ns(now));
        let mut rtp = 0u32;
        let mut rtx = 0u64;
        let mut bytes = 0u64;
        let mut audio = 0u64;
        let audio_pt = self.audio.map(|(_, pt)| *pt);
        let mut send_errors = 0u64;
        let error;
        {
            let (rtc, sock, rtx_pts) = if sub {
                (&mut self.subscribe, &mut self.sub_sock, &self.sub_rtx)
            } else {
                (&mut self.publish, &mut self.pub_sock, &self.pub_rtx)
            };
            let (timeout, failed) = rtc::drain(
                rtc,
                now,
                |t| {
                    if is_rtp(&t.contents) {
                        rtp += 1;
                        bytes += t.contents.len() as u64;
                        let pt = t.contents[1] & 0x7f;
                        if rtx_pts.contains(&pt) {
                            rtx += 1;
                        } else if Some(pt) == audio_pt {
                            audio += 1;
                        }
                    }
                    if !sock.send(&t) {
                        send_errors += 1;
                    }
                },
                &mut events,
            );
            sock.flush();
            error = failed.map(|e| e.to_string());
            if sub {
                self.sub_timeout = timeout;
            } else {
                self.pub_timeout = timeout;
            }
        }
        self.res.send_errors += send_errors;
        if in_window && !sub {
            self.res.pub_rtp_win += u64::from(rtp);
            self.res.pub_rtx_win += rtx;
            self.res.pub_bytes_win += bytes;
            self.res.pub_kind_win[AUDIO] += audio;
            self.res.pub_kind_win[VIDEO] += u64::from(rtp) - rtx - audio;
        }
        if let Some(e) = error {
            self.rtc_error(format!("{} poll: {e}", side(sub)));
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
            Event::Connected => {
                self.res.sub_connected.get_or_insert(now);
            }
            Event::KeyframeRequest(_) if !sub => {
                self.res.keyframe_requests += 1;
                self.force_key = true;
            }
            Event::MediaData(data) if sub => {
                let Some(h) = frame_hdr(&data.data) else {
                    self.res.foreign += 1;
                    return;
                };
                let kind = h.kind as usize;
                if let std::collections::hash_map::Entry::Vacant(e) =
                    self.res.first_media.entry(h.publisher)
                {
                    e.insert(now);
                    self.progress.heard.fetch_add(1, Ordering::Relaxed);
                }
                if self.window.contains(h.send_ns) {
                    let pkts = (*data.seq_range.end()).saturating_sub(**data.seq_range.start()) + 1;
                    if kind == VIDEO {
                        if h.key {
                            self.res.video_pkts.1 = pkts as u32;
                        } else {
                            self.res.video_pkts.0 = pkts as u32;
                        }
                    }
                    let pair = self.res.pairs.entry(h.publisher).or_default();
                    pair.frames[kind] += 1;
                    pair.pkts[kind] += pkts;
                    let lat = ns(now).saturating_sub(h.send_ns) / 1000;
                    self.res.lat_us[kind].push(lat.min(u64::from(u32::MAX)) as u32);
                }
            }
            _ => {}
        }
    }

    /// Publishing starts (its schedule with it) once connected and negotiated.
    fn update_publishing(&mut self) {
        if self.pub_connected && self.media_ready {
            let now = Instant::now();
            self.next_audio = now;
            self.next_video = now;
            self.progress.publishing.store(true, Ordering::Relaxed);
        }
    }

    fn note_skip(&mut self, slots: u64, now: Instant) {
        if self.window.contains(ns(now)) {
            self.res.skipped += slots;
        }
    }

    fn on_datagram(&mut self, sub: bool, source: SocketAddr, data: &[u8], now: Instant) {
        if sub && is_rtp(data) && self.window.contains(ns(now)) {
            self.res.sub_rtp_win += 1;
            self.res.sub_bytes_win += data.len() as u64;
            if self.sub_rtx.contains(&(data[1] & 0x7f)) {
                self.res.sub_rtx_win += 1;
            }
        }
        let destination = if sub { self.sub_addr } else { self.pub_addr };
        let (rtc, link) = if sub {
            (&mut self.subscribe, &self.sub_sock)
        } else {
            (&mut self.publish, &self.pub_sock)
        };
        let received = match link {
            Link::Udp(_) => rtc::receive(rtc, source, destination, data, now),
            Link::Tcp(_) => str0m::net::Receive::new(link.protocol(), source, destination, data)
                .map_err(|_| ReceiveError::Unparsable)
                .and_then(|r| {
                    rtc.handle_input(Input::Receive(now, r))
                        .map_err(ReceiveError::Input)
                }),
        };
        match received {
            Ok(()) => {}
            Err(ReceiveError::Unparsable) => return,
            Err(ReceiveError::Input(e)) => self.rtc_error(format!("{} input: {e}", side(sub))),
        }
        self.drain(sub, now);
    }

    fn tick(&mut self, now: Instant) {
        if self.pub_timeout <= now {
            if let Err(e) = self.publish.handle_input(Input::Timeout(now)) {
                self.rtc_error(format!("publish timeout: {e}"));
            }
            self.drain(false, now);
        }
        if self.sub_timeout <= now {
            if let Err(e) = self.subscribe.handle_input(Input::Timeout(now)) {
                self.rtc_error(format!("subscribe timeout: {e}"));
            }
            self.drain(true, now);
        }
        self.send_media(now);
    }

    fn next_wakeup(&self) -> Instant {
        let mut t = self.pub_timeout.min(self.sub_timeout);
        if self.media_ready && self.pub_connected {
            if self.audio.is_some() {
                t = t.min(self.next_audio);
            }
            if self.video.is_some() {
                t = t.min(self.next_video);
            }
        }
        t
    }

    fn send_media(&mut self, now: Instant) {
        if !self.media_ready || !self.pub_connected {
            return;
        }
        if let Some((mid, pt)) = self.audio {
            while self.next_audio <= now {
                let lag = now - self.next_audio;
                if lag > MAX_LAG {
                    let slots = lag.as_micros() / AUDIO_EVERY.as_micros();
                    self.note_skip(slots as u64, now);
                    self.audio_seq += slots as u32;
                    self.next_audio += AUDIO_EVERY * slots as u32;
                    continue;
                }
                self.note_lag(lag, now);
                let seq = self.audio_seq;
                let len = self.pattern.audio_len(seq);
                let mut data = self.audio_tpl[..len].to_vec();
                let h = Hdr {
                    publisher: self.spec.idx,
                    kind: AUDIO as u8,
                    key: true,
                    seq,
                    send_ns: ns(now),
                };
                put_hdr(&mut data[AUDIO_HDR_OFF..], &h);
                let t = MediaTime::new(u64::from(seq) * 960, Frequency::FORTY_EIGHT_KHZ);
                self.write_frame(mid, pt, t, data, AUDIO, now);
                self.audio_seq += 1;
                self.next_audio += AUDIO_EVERY;
            }
        }
        if let Some((mid, pt)) = self.video {
            let every = self.pattern.video_every();
            while self.next_video <= now {
                let lag = now - self.next_video;
                if lag > MAX_LAG {
                    let slots = (lag.as_micros() / every.as_micros()) as u32;
                    self.note_skip(u64::from(slots), now);
                    self.video_seq += slots;
                    self.next_video += every * slots;
                    continue;
                }
                self.note_lag(lag, now);
                let periodic = self
                    .last_key
                    .is_none_or(|t| now - t >= self.pattern.keyframe_interval);
                let requested = self.force_key && self.last_key.is_none_or(|t| now - t >= MAX_LAG);
                let key = periodic || requested;
                let seq = self.video_seq;
                let mut data = if key {
                    self.key_tpl.clone()
                } else {
                    self.delta_tpl.clone()
                };
                let h = Hdr {
                    publisher: self.spec.idx,
                    kind: VIDEO as u8,
                    key,
                    seq,
                    send_ns: ns(now),
                };
                put_hdr(&mut data[VIDEO_HDR_OFF..], &h);
                let t = MediaTime::new(
                    u64::from(seq) * 90_000 / u64::from(self.pattern.fps.max(1)),
                    Frequency::NINETY_KHZ,
                );
                self.write_frame(mid, pt, t, data, VIDEO, now);
                if key {
                    self.last_key = Some(now);
                    self.force_key = false;
                    self.res.keyframes_sent += 1;
                }
                self.video_seq += 1;
                self.next_video += every;
            }
        }
    }

    fn note_lag(&mut self, lag: Duration, now: Instant) {
        if self.window.contains(ns(now)) {
            self.res.max_lag_us = self.res.max_lag_us.max(lag.as_micros() as u64);
        }
    }

    fn write_frame(
        &mut self,
        mid: Mid,
        pt: Pt,
        time: MediaTime,
        data: Vec<u8>,
        kind: usize,
        now: Instant,
    ) {
        let written = match self.publish.writer(mid) {
            Some(w) => w.write(pt, now, time, data),
            None => return,
        };
        if let Err(e) = written {
            self.rtc_error(format!("write {}: {e}", KIND_NAMES[kind]));
        }
        self.drain(false, now);
        if self.window.contains(ns(now)) {
            self.res.frames_win[kind] += 1;
        }
    }

    // ---- signalling ----

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
        let (offer, pending) = self.publish_media_offer(now)?;
        let msid = self.msid.clone();
        let params = json!({
            "sdpOffer": offer,
            "mediaMetadata": self.metadata(json!({ msid: {"alias": "cam"} })),
        });
        Ok(self.request("offerSdp", params, Rpc::MediaOffer(pending)))
    }

    /// An offer adding audio (and video, for a video publisher) sendonly under one msid.
    fn publish_media_offer(&mut self, now: Instant) -> Result<(String, SdpPendingOffer), String> {
        let mut api = self.publish.sdp_api();
        let msid = self.msid.clone();
        let a = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some(msid.clone()),
            Some(format!("{msid}-audio")),
            None,
        );
        let v = self.spec.video.then(|| {
            api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(msid.clone()),
                Some(format!("{msid}-video")),
                None,
            )
        });
        let (offer, pending) = api.apply().ok_or("no media offer")?;
        self.drain(false, now);
        // Remember the mids; the payload types are known once the answer is in.
        self.audio = Some((a, Pt::from(0)));
        self.video = v.map(|m| (m, Pt::from(0)));
        Ok((offer.to_sdp_string(), pending))
    }

    fn accept_publish_answer(
        &mut self,
        pending: SdpPendingOffer,
        sdp: &str,
        now: Instant,
    ) -> Result<(), String> {
        self.pub_sock.connect_from_sdp(sdp)?;
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
            self.rpc_error(format!(
                "unparsable frame: {}",
                &text[..text.len().min(100)]
            ));
            return out;
        };
        if let Some(method) = v["method"].as_str() {
            if method == "sdpOffer" {
                match self.on_sdp_offer(&v["params"], now) {
                    Ok(Some(answer)) => out.push(answer),
                    Ok(None) => {}
                    Err(e) => self.rpc_error(format!("sdpOffer: {e}")),
                }
            }
            return out;
        }
        let Some(id) = v["id"].as_u64() else {
            return out;
        };
        let Some(kind) = self.rpc.remove(&id) else {
            return out;
        };
        if let Some(err) = v.get("error") {
            let what = match kind {
                Rpc::Prefs => "setMediaPreferences",
                Rpc::DataOffer(_) => "offerSdp (data)",
                Rpc::MediaOffer(_) => "offerSdp (media)",
                Rpc::Answer => "answerSdp",
            };
            self.rpc_error(format!("{what}: {err}"));
            return out;
        }
        let result = &v["result"];
        let answer = || {
            result["sdpAnswer"]
                .as_str()
                .ok_or_else(|| "offerSdp result without sdpAnswer".to_owned())
        };
        let step = match kind {
            Rpc::Prefs => self.data_offer(now).map(Some),
            Rpc::DataOffer(pending) if self.pattern.idle => answer()
                .and_then(|sdp| self.accept_publish_answer(pending, sdp, now))
                .map(|()| {
                    // Connected and publishing nothing: "ready" for the idle report.
                    self.media_ready = true;
                    self.update_publishing();
                    None
                }),
            Rpc::DataOffer(pending) => answer()
                .and_then(|sdp| self.accept_publish_answer(pending, sdp, now))
                .and_then(|()| self.media_offer(now))
                .map(Some),
            Rpc::MediaOffer(pending) => answer()
                .and_then(|sdp| self.accept_publish_answer(pending, sdp, now))
                .map(|()| {
                    self.publish_negotiated();
                    None
                }),
            Rpc::Answer => Ok(None),
        };
        match step {
            Ok(Some(msg)) => out.push(msg),
            Ok(None) => {}
            Err(e) => self.rpc_error(e),
        }
        out
    }

    /// The media m-lines' payload types, once the publish answer is in; publishing starts.
    fn publish_negotiated(&mut self) {
        self.pub_rtx = rtx_pts(&self.publish);
        if let Some((mid, _)) = self.audio {
            self.audio = payload_type(&mut self.publish, mid, Codec::Opus).map(|pt| (mid, pt));
        }
        if let Some((mid, _)) = self.video {
            self.video = payload_type(&mut self.publish, mid, Codec::Vp8).map(|pt| (mid, pt));
        }
        if self.audio.is_none() || (self.spec.video && self.video.is_none()) {
            self.rtc_error("publish answer lacks Opus or VP8".into());
        }
        self.media_ready = true;
        self.update_publishing();
    }

    /// Applies a subscribe offer from the server; returns the answer's SDP. `channels`: open
    /// the SDK's built-in data channels (patchbay) on the first offer.
    fn accept_sub_offer(
        &mut self,
        sdp: &str,
        now: Instant,
        channels: bool,
    ) -> Result<String, String> {
        self.sub_sock.connect_from_sdp(sdp)?;
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("offer: {e}"))?;
        let _ = self.subscribe.handle_input(Input::Timeout(now));
        self.drain(true, now);
        let answer = self
            .subscribe
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("accept_offer: {e}"))?;
        if channels && !self.sub_channels {
            self.sub_channels = true;
            for (id, label) in [(0, HEARTBEAT), (1, DIAGNOSTICS)] {
                self.subscribe
                    .direct_api()
                    .create_data_channel(builtin_channel(id, label));
            }
        }
        self.drain(true, now);
        self.sub_rtx = rtx_pts(&self.subscribe);
        self.res.offers += 1;
        self.res.first_offer.get_or_insert(now);
        Ok(answer.to_sdp_string())
    }

    fn on_sdp_offer(&mut self, params: &Value, now: Instant) -> Result<Option<String>, String> {
        let revision = params["sdpRevision"].as_u64().ok_or("no sdpRevision")?;
        if revision <= self.revision {
            // The SDK silently ignores these.
            self.res.stale_revisions += 1;
            return Ok(None);
        }
        let sdp = params["sdpOffer"].as_str().ok_or("no sdpOffer")?;
        let answer = self.accept_sub_offer(sdp, now, true)?;
        self.revision = revision;
        Ok(Some(self.request(
            "answerSdp",
            json!({"sdpAnswer": answer}),
            Rpc::Answer,
        )))
    }

    fn rpc_error(&mut self, e: String) {
        if self.res.rpc_errors.len() < 8 {
            self.res.rpc_errors.push(e);
        }
    }
}

async fn run_device(
    spec: Spec,
    ws_base: String,
    window: Arc<Window>,
    progress: Arc<Progress>,
    pattern: Pattern,
    media_ip: std::net::IpAddr,
    mut stop: watch::Receiver<bool>,
) -> DevResult {
    let idx = spec.idx;
    let fail = |e: String| {
        progress.failed.store(true, Ordering::Relaxed);
        DevResult {
            idx,
            rpc_errors: vec![e],
            ..Default::default()
        }
    };
    let url = format!(
        "{ws_base}/v3/?token={}&client=load&sdkVersion=media_load&uniqueId={}",
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
    let tcp = pattern.tcp;
    let mut dev = match Dev::new(spec, window, progress.clone(), pattern, tcp, media_ip).await {
        Ok(d) => d,
        Err(e) => return fail(format!("sockets: {e}")),
    };
    let mut pub_buf = vec![0u8; 65536];
    let mut sub_buf = vec![0u8; 65536];
    let mut pub_packets = Vec::new();
    let mut sub_packets = Vec::new();
    let mut outgoing = dev.start();
    loop {
        for msg in outgoing.drain(..) {
            if ws.send(Message::text(msg)).await.is_err() {
                dev.rpc_error("websocket send failed".into());
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
                        dev.rpc_error(format!("server closed the websocket: {c:?}"));
                        progress.failed.store(true, Ordering::Relaxed);
                        // Keep pumping media until told to stop; signalling is gone.
                        let _ = stop.changed().await;
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        dev.rpc_error(format!("websocket: {e}"));
                        break;
                    }
                    None => break,
                }
            }
            r = dev.pub_sock.recv(&mut pub_buf, &mut pub_packets) => {
                let now = Instant::now();
                if let Err(e) = r {
                    dev.rtc_error(format!("publish link: {e}"));
                }
                dev.pub_sock.flush();
                for (src, p) in pub_packets.drain(..) {
                    dev.on_datagram(false, src, &p, now);
                }
            }
            r = dev.sub_sock.recv(&mut sub_buf, &mut sub_packets) => {
                let now = Instant::now();
                if let Err(e) = r {
                    dev.rtc_error(format!("subscribe link: {e}"));
                }
                dev.sub_sock.flush();
                for (src, p) in sub_packets.drain(..) {
                    dev.on_datagram(true, src, &p, now);
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

// ---- phase 2: raw relay --------------------------------------------------------------------

#[derive(Debug, Default)]
struct RelayThreadStats {
    relayed_win: u64,
    received_win: u64,
    cpu_win_s: f64,
    send_errors: u64,
}

fn relay_loop(
    sock: std::net::UdpSocket,
    routes: HashMap<SocketAddr, Vec<SocketAddr>>,
    start: Instant,
    end: Instant,
    stop: Arc<AtomicBool>,
) -> RelayThreadStats {
    let mut stats = RelayThreadStats::default();
    let mut buf = [0u8; 2048];
    let mut cpu0: Option<f64> = None;
    let mut cpu1: Option<f64> = None;
    while !stop.load(Ordering::Relaxed) {
        let got = sock.recv_from(&mut buf);
        let now = Instant::now();
        if cpu0.is_none() && now >= start {
            cpu0 = thread_cpu_seconds();
        }
        if cpu1.is_none() && now >= end {
            cpu1 = thread_cpu_seconds();
        }
        let counting = cpu0.is_some() && cpu1.is_none();
        let Ok((n, src)) = got else { continue };
        let Some(dsts) = routes.get(&src) else {
            continue;
        };
        if counting {
            stats.received_win += 1;
        }
        for d in dsts {
            match sock.send_to(&buf[..n], d) {
                Ok(_) if counting => stats.relayed_win += 1,
                Ok(_) => {}
                Err(_) => stats.send_errors += 1,
            }
        }
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        stats.cpu_win_s = b - a;
    }
    stats
}

#[derive(Debug, Default)]
struct RelayDevResult {
    idx: u32,
    sent_win: [u64; 2],
    /// Per publisher: packets received that were sent in the window.
    recv_win: HashMap<u32, u64>,
    lat_us: Vec<u32>,
    skipped: u64,
}

#[allow(clippy::too_many_arguments)]
async fn relay_device(
    idx: u32,
    sock: UdpSocket,
    relay: SocketAddr,
    video: bool,
    pattern: Pattern,
    video_pkts: (u32, u32),
    window: Arc<Window>,
    send_until: Instant,
    stop_at: Instant,
) -> RelayDevResult {
    let mut res = RelayDevResult {
        idx,
        ..Default::default()
    };
    let seed = u64::from(idx) * 31 + 5;
    let tpl = filler(
        pattern.keyframe_bytes.max(pattern.video_frame_bytes) + RTP_OVERHEAD + HDR_LEN,
        seed,
    );
    let mut buf = vec![0u8; 2048];
    let every = pattern.video_every();
    let start = Instant::now();
    let mut next_audio = start;
    let mut next_video = start;
    let mut last_key: Option<Instant> = None;
    let (mut aseq, mut vseq) = (0u32, 0u32);
    loop {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        if now < send_until {
            while next_audio <= now {
                if now - next_audio > MAX_LAG {
                    res.skipped += 1;
                    next_audio += AUDIO_EVERY;
                    aseq += 1;
                    continue;
                }
                let len = pattern.audio_len(aseq) + RTP_OVERHEAD;
                let mut p = tpl[..len].to_vec();
                let h = Hdr {
                    publisher: idx,
                    kind: AUDIO as u8,
                    key: true,
                    seq: aseq,
                    send_ns: ns(now),
                };
                put_hdr(&mut p, &h);
                if sock.send_to(&p, relay).await.is_ok() && window.contains(h.send_ns) {
                    res.sent_win[AUDIO] += 1;
                }
                aseq += 1;
                next_audio += AUDIO_EVERY;
            }
            while video && next_video <= now {
                if now - next_video > MAX_LAG {
                    res.skipped += 1;
                    next_video += every;
                    continue;
                }
                let key = last_key.is_none_or(|t| now - t >= pattern.keyframe_interval);
                if key {
                    last_key = Some(now);
                }
                let (frame, pkts) = if key {
                    (pattern.keyframe_bytes, video_pkts.1.max(1))
                } else {
                    (pattern.video_frame_bytes, video_pkts.0.max(1))
                };
                let len = (frame / pkts as usize + RTP_OVERHEAD).clamp(HDR_LEN, 1400);
                for _ in 0..pkts {
                    let mut p = tpl[..len].to_vec();
                    let h = Hdr {
                        publisher: idx,
                        kind: VIDEO as u8,
                        key,
                        seq: vseq,
                        send_ns: ns(now),
                    };
                    put_hdr(&mut p, &h);
                    if sock.send_to(&p, relay).await.is_ok() && window.contains(h.send_ns) {
                        res.sent_win[VIDEO] += 1;
                    }
                    vseq += 1;
                }
                next_video += every;
            }
        }
        let mut wake = stop_at;
        if now < send_until {
            wake = wake.min(next_audio);
            if video {
                wake = wake.min(next_video);
            }
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let now = Instant::now();
                let mut handle = |b: &[u8]| {
                    if let Some(h) = read_hdr(b) {
                        if window.contains(h.send_ns) {
                            *res.recv_win.entry(h.publisher).or_default() += 1;
                            res.lat_us.push((ns(now).saturating_sub(h.send_ns) / 1000).min(u64::from(u32::MAX)) as u32);
                        }
                    }
                };
                if let Ok((n, _)) = r {
                    handle(&buf[..n]);
                    for _ in 0..64 {
                        match sock.try_recv_from(&mut buf) {
                            Ok((n, _)) => handle(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    res
}

// ---- main ----------------------------------------------------------------------------------

/// Adds a participant to a session: subscribed to everyone, or to nobody for a late one.
async fn join(rest: &Rest, session: &str, participant: &str, late: bool) -> Result<(), String> {
    let body = (!late).then(|| json!({"sessionId": session}));
    rest.call(
        reqwest::Method::PUT,
        &format!("/sessions/{session}/participants/{participant}"),
        body,
    )
    .await
    .map(|_| ())
}

fn percentiles(mut v: Vec<u32>) -> Value {
    v.sort_unstable();
    json!({
        "n": v.len(),
        "p50_ms": round(pct_ms(&v, 50.0), 2),
        "p90_ms": round(pct_ms(&v, 90.0), 2),
        "p99_ms": round(pct_ms(&v, 99.0), 2),
        "max_ms": round(pct_ms(&v, 100.0), 2),
    })
}

/// patchbay's REST setup: one session per load-tool session, its participants (joined now
/// unless `--lobby`; late ones without a subscription).
async fn rest_setup(
    rest: &Rest,
    args: &Args,
    n: usize,
    m: usize,
    video_per_session: usize,
    sessions: &mut Vec<String>,
    specs: &mut Vec<Spec>,
) -> Result<(), String> {
    let is_late = |s: usize, i: usize| (0..args.late).any(|k| k % n == s && m - 1 - k / n == i);
    for s in 0..n {
        let v = rest
            .call(
                reqwest::Method::POST,
                "/sessions",
                Some(json!({"tag": format!("media-load-{s}")})),
            )
            .await?;
        sessions.push(v["id"].as_str().ok_or("session without id")?.to_owned());
    }
    for (s, sid) in sessions.iter().enumerate() {
        for i in 0..m {
            let v = rest
                .call(
                    reqwest::Method::POST,
                    "/participants",
                    Some(json!({
                        "publishPermissions": ["AUDIO", "VIDEO"],
                        "tag": format!("load-{s}-{i}"),
                        "deviceApiVersion": "V3",
                    })),
                )
                .await?;
            let participant = v["participant"]["id"]
                .as_str()
                .ok_or("participant without id")?
                .to_owned();
            let token = v["token"].as_str().ok_or("no token")?.to_owned();
            let late = is_late(s, i);
            if !args.lobby {
                join(rest, sid, &participant, late).await?;
            }
            specs.push(Spec {
                idx: specs.len() as u32,
                session: s,
                participant,
                token,
                video: i < video_per_session,
                late,
            });
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let _ = base();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("media_load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let url = args.url.trim_end_matches('/').to_owned();
    let janus = args.server == Server::Janus;
    let scheme = if janus { "ws://" } else { "http://" };
    let host = url
        .strip_prefix(scheme)
        .ok_or_else(|| format!("--url must start with {scheme}"))?;
    if !host.starts_with("127.0.0.1:") {
        return Err(format!(
            "--url must be {scheme}127.0.0.1:PORT (local traffic only)"
        ));
    }
    // Media stays on this host: the address must be one of its own.
    std::net::UdpSocket::bind((args.media_ip, 0)).map_err(|e| {
        format!(
            "--media-ip {} is not an address of this host: {e}",
            args.media_ip
        )
    })?;
    if janus && (args.lobby || args.tcp) {
        return Err("--lobby and --tcp are patchbay-only".into());
    }
    let m = args.participants;
    let n = args.sessions;
    if !(2..=20).contains(&m) || n == 0 {
        return Err("need 1+ sessions of 2..=20 participants".into());
    }
    if args.late > n * (m - 1) {
        return Err("too many --late participants".into());
    }
    let video_per_session = args.video_publishers.unwrap_or(m).min(m);
    let pattern = Pattern {
        fps: args.fps.max(1),
        video_frame_bytes: args.video_frame_bytes,
        keyframe_bytes: args.keyframe_bytes,
        keyframe_interval: args.keyframe_interval,
        audio_min: args.audio_min_bytes,
        audio_max: args.audio_max_bytes.max(args.audio_min_bytes),
        tcp: args.tcp,
        idle: args.idle,
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

    println!(
        "media_load: {n} session(s) × {m} participants, {video_per_session} video publisher(s) per session, {} late; \
         audio {}–{} B @50/s, video {} fps {} B (key {} B every {:?}); duration {:?}, warmup {:?}; loadavg {}",
        args.late, pattern.audio_min, pattern.audio_max, pattern.fps, pattern.video_frame_bytes,
        pattern.keyframe_bytes, pattern.keyframe_interval, args.duration, args.warmup, loadavg()
    );

    // ---- setup: patchbay's sessions and participants over REST, or Janus's rooms
    let setup_started = Instant::now();
    let is_late = |s: usize, i: usize| (0..args.late).any(|k| k % n == s && m - 1 - k / n == i);
    let mut specs = Vec::new();
    let mut sessions = Vec::new();
    let mut rest = None;
    let mut control = None;
    if janus {
        control = Some(janus::create_rooms(&url, n, m).await?);
        for s in 0..n {
            sessions.push(janus::room_id(s).to_string());
            for i in 0..m {
                let idx = specs.len() as u32;
                specs.push(Spec {
                    idx,
                    session: s,
                    participant: format!("feed-{}", janus::feed_id(idx)),
                    token: String::new(),
                    video: i < video_per_session,
                    late: is_late(s, i),
                });
            }
        }
    } else {
        let r = Rest {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .map_err(|e| e.to_string())?,
            base: format!("{url}/v1/accounts/{}", args.account),
            username: args.username.clone(),
            password: args.password.clone(),
        };
        rest_setup(
            &r,
            &args,
            n,
            m,
            video_per_session,
            &mut sessions,
            &mut specs,
        )
        .await?;
        rest = Some(r);
    }
    println!(
        "{} setup: {} sessions, {} participants in {:.2}s",
        args.server.name(),
        n,
        specs.len(),
        setup_started.elapsed().as_secs_f64()
    );

    // ---- devices
    let ws_base = format!("ws://{host}");
    let window = Arc::new(Window {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress: Vec<Arc<Progress>> = specs.iter().map(|_| Arc::default()).collect();
    let rss_before = args.server_pid.and_then(|p| proc_status_kb(p, "VmRSS:"));
    let connect_started = Instant::now();
    let mut tasks = Vec::new();
    // Janus: when each device's subscriber may join (its room publishing, or a late one's turn).
    let mut go = Vec::new();
    for (spec, p) in specs.iter().zip(&progress) {
        if janus {
            let (tx, rx) = watch::channel(false);
            go.push(tx);
            let feeds = specs
                .iter()
                .filter(|o| o.session == spec.session && o.idx != spec.idx)
                .map(|o| janus::feed_id(o.idx))
                .collect();
            tasks.push(tokio::spawn(janus::run_device(
                spec.clone(),
                url.clone(),
                feeds,
                window.clone(),
                p.clone(),
                pattern.clone(),
                args.media_ip,
                rx,
                stop_rx.clone(),
            )));
        } else {
            tasks.push(tokio::spawn(run_device(
                spec.clone(),
                ws_base.clone(),
                window.clone(),
                p.clone(),
                pattern.clone(),
                args.media_ip,
                stop_rx.clone(),
            )));
        }
    }
    if let (true, Some(rest)) = (args.lobby, &rest) {
        // Everyone connects and publishes outside any session, then joins.
        while connect_started.elapsed() < args.setup_timeout
            && !progress
                .iter()
                .all(|p| p.publishing.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "lobby: devices publishing after {:.2}s; joining sessions",
            connect_started.elapsed().as_secs_f64()
        );
        for spec in &specs {
            join(rest, &sessions[spec.session], &spec.participant, spec.late).await?;
        }
    }
    if args.idle {
        while connect_started.elapsed() < args.setup_timeout
            && !progress
                .iter()
                .all(|p| p.publishing.load(Ordering::Relaxed))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connected = progress
            .iter()
            .filter(|p| p.publishing.load(Ordering::Relaxed))
            .count();
        // Let the connections settle (DTLS, SCTP, the subscribe offers answered).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_after = args.server_pid.and_then(|p| proc_status_kb(p, "VmRSS:"));
        let per_device = rss_before
            .zip(rss_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / connected.max(1) as f64);
        println!(
            "IDLE: {connected}/{} devices connected; server RSS {rss_before:?} kB before, {rss_after:?} kB with them; {per_device:.1?} kB per device",
            specs.len()
        );
        println!(
            "RESULT {}",
            json!({"label": args.label, "idle_devices": connected, "devices": specs.len(),
                   "server_rss_kb_before": rss_before, "server_rss_kb": rss_after,
                   "kb_per_device": per_device})
        );
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        return if connected == specs.len() {
            Ok(())
        } else {
            Err("not every idle device connected".into())
        };
    }
    let expected_heard = (m - 1) as u32;
    let mut ready = false;
    let mut last_print = Instant::now();
    let mut room_told = vec![false; n];
    while connect_started.elapsed() < args.setup_timeout {
        if janus {
            // A room's subscribers join once all its publishers publish and Janus has them up.
            for (s, told) in room_told.iter_mut().enumerate() {
                let room = || specs.iter().zip(&progress).filter(|(x, _)| x.session == s);
                let up = |p: &Progress| {
                    p.publishing.load(Ordering::Relaxed) && p.server_up.load(Ordering::Relaxed)
                };
                if !*told && room().all(|(_, p)| up(p)) {
                    *told = true;
                    for (x, _) in room().filter(|(x, _)| !x.late) {
                        let _ = go[x.idx as usize].send(true);
                    }
                }
            }
        }
        let publishing = progress
            .iter()
            .filter(|p| p.publishing.load(Ordering::Relaxed))
            .count();
        let hearing = specs
            .iter()
            .zip(&progress)
            .filter(|(s, p)| !s.late && p.heard.load(Ordering::Relaxed) >= expected_heard)
            .count();
        let failed = progress
            .iter()
            .filter(|p| p.failed.load(Ordering::Relaxed))
            .count();
        let want = specs.iter().filter(|s| !s.late).count();
        if publishing == specs.len() && hearing == want {
            ready = true;
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            last_print = Instant::now();
            println!(
                "  … {:.1}s: {publishing}/{} publishing, {hearing}/{want} hear all {} others, {failed} failed",
                connect_started.elapsed().as_secs_f64(),
                specs.len(),
                expected_heard
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let setup_s = connect_started.elapsed().as_secs_f64();
    if ready {
        println!("all devices publishing and hearing everyone after {setup_s:.2}s");
    } else {
        println!("WARNING: not every device was publishing/hearing everyone after {setup_s:.1}s; measuring anyway");
    }

    // ---- late subscriptions
    let mut put_at: HashMap<u32, Instant> = HashMap::new();
    for spec in specs.iter().filter(|s| s.late) {
        let sid = &sessions[spec.session];
        put_at.insert(spec.idx, Instant::now());
        let Some(rest) = &rest else {
            // Janus: the subscriber joins now (stands in for the subscription PUT).
            let _ = go[spec.idx as usize].send(true);
            continue;
        };
        rest.call(
            reqwest::Method::PUT,
            &format!(
                "/sessions/{sid}/participants/{}/subscriptions",
                spec.participant
            ),
            Some(json!({"sessionId": sid})),
        )
        .await?;
    }

    // ---- measured window
    let start = Instant::now() + args.warmup;
    let end = start + args.duration;
    window.start.store(ns(start), Ordering::Relaxed);
    window.end.store(ns(end), Ordering::Relaxed);
    tokio::time::sleep_until(start.into()).await;
    let (srv0, tool0, load0, drops0) = (server_cpu(), tool_cpu(), loadavg(), udp_rcvbuf_errors());
    tokio::time::sleep_until(end.into()).await;
    let (srv1, tool1, load1, drops1) = (server_cpu(), tool_cpu(), loadavg(), udp_rcvbuf_errors());
    let rss = args
        .server_pid
        .map(|p| (proc_status_kb(p, "VmRSS:"), proc_status_kb(p, "VmHWM:")));
    let udp_drops = drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a));
    tokio::time::sleep(Duration::from_millis(1000)).await; // frames in flight
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => results.push(r),
            Err(e) => return Err(format!("device task: {e}")),
        }
    }
    results.sort_by_key(|r| r.idx);
    if let Some(rest) = &rest {
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
    }
    if let Some(c) = control {
        c.finish(n).await;
    }

    let secs = args.duration.as_secs_f64();
    let mut pb = report_server(
        args.server.name(),
        &specs,
        &results,
        &put_at,
        secs,
        srv0.zip(srv1).map(|(a, b)| b - a),
        tool0.zip(tool1).map(|(a, b)| b - a),
        setup_s,
        ready,
    );
    pb["udp_rcvbuf_errors"] = json!(udp_drops);
    let (rss_kb, hwm_kb) = rss.unwrap_or((None, None));
    pb["server_rss_kb"] = json!(rss_kb);
    pb["server_peak_rss_kb"] = json!(hwm_kb);
    if let Some(kb) = rss_kb {
        println!(
            "server RSS at the window's end: {:.1} MB (peak {:.1} MB)",
            kb as f64 / 1024.0,
            hwm_kb.unwrap_or(0) as f64 / 1024.0
        );
    }
    pb["loadavg_window"] = json!([load0, load1]);
    println!(
        "host UDP receive-buffer overflows in the window: {}; loadavg at window start {load0}, at end {load1}",
        udp_drops.map_or("?".to_string(), |d| d.to_string())
    );

    // ---- raw relay
    let relay = if args.relay_duration.is_zero() {
        Value::Null
    } else {
        let video_pkts = results
            .iter()
            .map(|r| r.video_pkts)
            .find(|p| p.0 > 0 && p.1 > 0)
            .unwrap_or((
                pattern.video_frame_bytes.div_ceil(1100) as u32,
                pattern.keyframe_bytes.div_ceil(1100) as u32,
            ));
        run_relay(
            &specs,
            m,
            &pattern,
            video_pkts,
            args.relay_duration,
            ticks,
            args.media_ip,
        )
        .await?
    };

    let pb_per_cpu = pb["fwd_pkts_per_server_cpu_s"].as_f64().unwrap_or(0.0);
    let raw_per_cpu = relay["relayed_pkts_per_cpu_s"].as_f64().unwrap_or(0.0);
    let r = ratio(pb_per_cpu, raw_per_cpu);
    if raw_per_cpu > 0.0 && pb_per_cpu > 0.0 {
        println!(
            "{}/raw relay packets per CPU-second: {pb_per_cpu:.0} / {raw_per_cpu:.0} = {:.1} % (target ≥ 60 %)",
            args.server.name(),
            r * 100.0
        );
    }
    let mut result = json!({
        "label": args.label,
        "server": args.server.name(),
        "sessions": n,
        "participants": m,
        "video_publishers_per_session": video_per_session,
        "late": args.late,
        "duration_s": secs,
        "pattern": {
            "audio_bytes": [pattern.audio_min, pattern.audio_max],
            "fps": pattern.fps,
            "video_frame_bytes": pattern.video_frame_bytes,
            "keyframe_bytes": pattern.keyframe_bytes,
            "keyframe_interval_s": pattern.keyframe_interval.as_secs_f64(),
        },
        "relay": relay,
        "ratio_per_cpu": round(r, 3),
        "meets_60pct": r >= 0.6,
        "loadavg_end": loadavg(),
    });
    // The server's figures under its own name ("patchbay" or "janus").
    result[args.server.name()] = pb.clone();
    println!("RESULT {result}");
    if args.check {
        let problems: Vec<String> = [
            (!ready).then(|| "not every device connected and heard everyone".to_owned()),
            (pb["dead_pairs"].as_u64() != Some(0))
                .then(|| format!("dead pairs: {}", pb["dead_pairs"])),
            (pb["sub_never_received"].as_u64() != Some(0)).then(|| {
                format!(
                    "late subscribers without media: {}",
                    pb["sub_never_received"]
                )
            }),
            (pb["errors"].as_array().is_some_and(|e| !e.is_empty()))
                .then(|| format!("errors: {}", pb["errors"])),
            (pb["foreign_frames"].as_u64() != Some(0))
                .then(|| format!("foreign frames: {}", pb["foreign_frames"])),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            return Err(format!("check failed: {}", problems.join("; ")));
        }
        println!("media_load check: 1 passed, 0 failed");
    }
    Ok(())
}

/// The server phase's figures (the same for patchbay and Janus), printed and as JSON.
#[allow(clippy::too_many_arguments)]
fn report_server(
    name: &str,
    specs: &[Spec],
    results: &[DevResult],
    put_at: &HashMap<u32, Instant>,
    secs: f64,
    server_cpu: Option<f64>,
    tool_cpu: Option<f64>,
    setup_s: f64,
    ready: bool,
) -> Value {
    let by_idx: HashMap<u32, &DevResult> = results.iter().map(|r| (r.idx, r)).collect();
    let mut expected_frames = [0u64; 2];
    let mut received_frames = [0u64; 2];
    let mut expected_pkts = 0u64;
    let mut worst_pair = (1.0f64, 0u32, 0u32);
    let mut dead_pairs = 0u64;
    let mut pairs = 0u64;
    for sub in specs {
        let Some(sr) = by_idx.get(&sub.idx) else {
            continue;
        };
        for publ in specs
            .iter()
            .filter(|p| p.session == sub.session && p.idx != sub.idx)
        {
            let Some(pr) = by_idx.get(&publ.idx) else {
                continue;
            };
            pairs += 1;
            let got = sr.pairs.get(&publ.idx).cloned().unwrap_or_default();
            let mut exp_all = 0u64;
            let mut got_all = 0u64;
            for k in [AUDIO, VIDEO] {
                expected_frames[k] += pr.frames_win[k];
                received_frames[k] += got.frames[k].min(pr.frames_win[k]);
                exp_all += pr.frames_win[k];
                got_all += got.frames[k].min(pr.frames_win[k]);
            }
            expected_pkts += pr.pub_kind_win[AUDIO] + pr.pub_kind_win[VIDEO];
            if exp_all > 0 {
                let frac = got_all as f64 / exp_all as f64;
                if frac < worst_pair.0 {
                    worst_pair = (frac, publ.idx, sub.idx);
                }
                if got_all == 0 {
                    dead_pairs += 1;
                }
            }
        }
    }
    // Subscribers that heard nothing at all in the window: what their connection did.
    let dead_subscribers: Vec<Value> = results
        .iter()
        .filter(|r| r.pairs.values().all(|p| p.frames == [0, 0]))
        .map(|r| {
            json!({
                "participant": r.idx,
                "offers": r.offers,
                "subscribe_connected": r.sub_connected.is_some(),
                "publishers_heard_ever": r.first_media.len(),
                "sub_rtp_pkts_in_window": r.sub_rtp_win,
                "errors": r.rpc_errors.iter().chain(&r.rtc_errors).collect::<Vec<_>>(),
            })
        })
        .collect();
    let sum = |f: fn(&DevResult) -> u64| results.iter().map(f).sum::<u64>();
    let pub_rtp = sum(|r| r.pub_rtp_win);
    let pub_rtx = sum(|r| r.pub_rtx_win);
    let sub_rtp = sum(|r| r.sub_rtp_win);
    let sub_rtx = sum(|r| r.sub_rtx_win);
    let fwd = sub_rtp - sub_rtx;
    let pkt_loss = 1.0 - ratio(fwd as f64, expected_pkts as f64);
    let frame_loss = |k: usize| 1.0 - ratio(received_frames[k] as f64, expected_frames[k] as f64);
    let mut lat: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for r in results {
        for k in [AUDIO, VIDEO] {
            lat[k].extend_from_slice(&r.lat_us[k]);
        }
    }
    let lat_audio = percentiles(std::mem::take(&mut lat[AUDIO]));
    let lat_video = percentiles(std::mem::take(&mut lat[VIDEO]));
    // Subscription PUT → first frame from each publisher (late participants).
    let mut first_media_us = Vec::new();
    let mut first_any_us = Vec::new();
    let mut offer_us = Vec::new();
    let mut never = 0u64;
    let mut late_detail = Vec::new();
    for spec in specs.iter().filter(|s| s.late) {
        let (Some(t0), Some(r)) = (put_at.get(&spec.idx), by_idx.get(&spec.idx)) else {
            continue;
        };
        let since = |t: Option<Instant>| {
            t.map(|t| round(t.saturating_duration_since(*t0).as_secs_f64() * 1000.0, 1))
        };
        late_detail.push(json!({
            "participant": spec.idx,
            "offers": r.offers,
            "first_offer_ms": since(r.first_offer),
            "subscribe_connected_ms": since(r.sub_connected),
            "publishers_heard": r.first_media.len(),
        }));
        if let Some(o) = r.first_offer {
            offer_us.push(o.saturating_duration_since(*t0).as_micros() as u32);
        }
        let mut first: Option<u32> = None;
        for publ in specs
            .iter()
            .filter(|p| p.session == spec.session && p.idx != spec.idx)
        {
            match r.first_media.get(&publ.idx) {
                Some(t) => {
                    let us = t.saturating_duration_since(*t0).as_micros() as u32;
                    first_media_us.push(us);
                    first = Some(first.map_or(us, |f| f.min(us)));
                }
                None => never += 1,
            }
        }
        if let Some(f) = first {
            first_any_us.push(f);
        }
    }
    let sub_first = percentiles(first_media_us);
    let sub_first_any = percentiles(first_any_us);
    let put_offer = percentiles(offer_us);
    let frames_pkts = |k: usize| {
        let f = sum_k(results, k, |r, k| r.frames_win[k]);
        ratio(sum_k(results, k, |r, k| r.pub_kind_win[k]) as f64, f as f64)
    };
    let sub_pkts_per_frame = |k: usize| {
        let (mut f, mut p) = (0u64, 0u64);
        for r in results {
            for pair in r.pairs.values() {
                f += pair.frames[k];
                p += pair.pkts[k];
            }
        }
        ratio(p as f64, f as f64)
    };
    let errors: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.rpc_errors
                .iter()
                .chain(&r.rtc_errors)
                .map(move |e| format!("#{}: {e}", r.idx))
        })
        .take(20)
        .collect();
    let per_cpu = server_cpu.map(|c| ratio(fwd as f64, c));
    let v = json!({
        "ready": ready,
        "setup_s": round(setup_s, 2),
        "publisher_rtp_pkts": pub_rtp,
        "publisher_rtx_pkts": pub_rtx,
        "publisher_pps": round(pub_rtp as f64 / secs, 1),
        "publisher_mbps": round(sum(|r| r.pub_bytes_win) as f64 * 8.0 / secs / 1e6, 2),
        "expected_fwd_pkts": expected_pkts,
        "forwarded_pkts": fwd,
        "forwarded_rtx_pkts": sub_rtx,
        "forwarded_pps": round(fwd as f64 / secs, 1),
        "forwarded_mbps": round(sum(|r| r.sub_bytes_win) as f64 * 8.0 / secs / 1e6, 2),
        "pkt_loss_pct": round(pkt_loss * 100.0, 3),
        "frames_expected": {"audio": expected_frames[AUDIO], "video": expected_frames[VIDEO]},
        "frames_received": {"audio": received_frames[AUDIO], "video": received_frames[VIDEO]},
        "frame_loss_pct": {"audio": round(frame_loss(AUDIO) * 100.0, 3), "video": round(frame_loss(VIDEO) * 100.0, 3)},
        "pkts_per_video_frame": {"publisher": round(frames_pkts(VIDEO), 2), "subscriber": round(sub_pkts_per_frame(VIDEO), 2)},
        "pairs": pairs,
        "dead_pairs": dead_pairs,
        "worst_pair": {"received_pct": round(worst_pair.0 * 100.0, 2), "publisher": worst_pair.1, "subscriber": worst_pair.2},
        "latency_audio": lat_audio,
        "latency_video": lat_video,
        "server_cpu_s": server_cpu.map(|c| round(c, 2)),
        "server_cpu_pct": server_cpu.map(|c| round(c / secs * 100.0, 1)),
        "fwd_pkts_per_server_cpu_s": per_cpu.map(|p| round(p, 0)),
        "tool_cpu_s": tool_cpu.map(|c| round(c, 2)),
        "tool_cpu_pct": tool_cpu.map(|c| round(c / secs * 100.0, 1)),
        "tool_skipped_slots": sum(|r| r.skipped),
        "tool_max_write_lag_ms": round(results.iter().map(|r| r.max_lag_us).max().unwrap_or(0) as f64 / 1000.0, 1),
        "send_errors": sum(|r| r.send_errors),
        "sub_put_to_first_media": sub_first,
        "sub_put_to_first_media_any": sub_first_any,
        "sub_put_to_offer": put_offer,
        "sub_never_received": never,
        "late_detail": late_detail,
        "dead_subscribers": dead_subscribers,
        "offers": sum(|r| r.offers),
        "stale_revisions": sum(|r| r.stale_revisions),
        "keyframe_requests": sum(|r| r.keyframe_requests),
        "keyframes_sent": sum(|r| r.keyframes_sent),
        "foreign_frames": sum(|r| r.foreign),
        "errors": errors,
    });
    println!("--- {name} (measured {secs:.0}s)");
    println!(
        "publishers sent {pub_rtp} RTP pkts ({:.0}/s, {} RTX); subscribers got {fwd} forwarded + {sub_rtx} RTX ({:.0}/s) of {expected_pkts} expected: packet loss {:.2} %",
        pub_rtp as f64 / secs,
        pub_rtx,
        fwd as f64 / secs,
        pkt_loss * 100.0
    );
    println!(
        "frames: audio {}/{} (loss {:.2} %), video {}/{} (loss {:.2} %); {pairs} pairs, {dead_pairs} received nothing, worst pair {:.1} % (pub #{} → sub #{})",
        received_frames[AUDIO], expected_frames[AUDIO], frame_loss(AUDIO) * 100.0,
        received_frames[VIDEO], expected_frames[VIDEO], frame_loss(VIDEO) * 100.0,
        worst_pair.0 * 100.0, worst_pair.1, worst_pair.2
    );
    println!(
        "latency (send → subscriber frame complete): audio {} / video {}",
        v["latency_audio"], v["latency_video"]
    );
    match server_cpu {
        Some(c) => println!(
            "server CPU {c:.2}s over {secs:.0}s ({:.0} %): {:.0} forwarded pkts per server CPU-second",
            c / secs * 100.0,
            per_cpu.unwrap_or(0.0)
        ),
        None => println!("server CPU: not measured (no --server-pid)"),
    }
    if let Some(c) = tool_cpu {
        println!(
            "tool CPU {c:.2}s ({:.0} % of one core); skipped send slots {}, worst write lag {} ms",
            c / secs * 100.0,
            v["tool_skipped_slots"],
            v["tool_max_write_lag_ms"]
        );
    }
    println!(
        "subscription PUT → first media per publisher: {}; first media of any: {}; PUT → sdpOffer: {}; never received: {never}",
        v["sub_put_to_first_media"], v["sub_put_to_first_media_any"], v["sub_put_to_offer"]
    );
    println!("late participants: {}", v["late_detail"]);
    if !v["dead_subscribers"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        println!(
            "subscribers that received nothing: {}",
            v["dead_subscribers"]
        );
    }
    println!(
        "offers {}, stale revisions {}, keyframe requests {}, keyframes sent {}, errors {}",
        v["offers"], v["stale_revisions"], v["keyframe_requests"], v["keyframes_sent"], v["errors"]
    );
    v
}

fn sum_k(results: &[DevResult], k: usize, f: fn(&DevResult, usize) -> u64) -> u64 {
    results.iter().map(|r| f(r, k)).sum()
}

async fn run_relay(
    specs: &[Spec],
    m: usize,
    pattern: &Pattern,
    video_pkts: (u32, u32),
    duration: Duration,
    ticks: f64,
    media_ip: std::net::IpAddr,
) -> Result<Value, String> {
    let relay_sock = std::net::UdpSocket::bind((media_ip, 0)).map_err(|e| e.to_string())?;
    relay_sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| e.to_string())?;
    let relay_addr = relay_sock.local_addr().map_err(|e| e.to_string())?;
    let mut socks = Vec::new();
    for _ in specs {
        let s = UdpSocket::bind((media_ip, 0))
            .await
            .map_err(|e| e.to_string())?;
        socks.push(s);
    }
    let addrs: Vec<SocketAddr> = socks.iter().filter_map(|s| s.local_addr().ok()).collect();
    let mut routes: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
    for a in specs {
        let dsts = specs
            .iter()
            .filter(|b| b.session == a.session && b.idx != a.idx)
            .map(|b| addrs[b.idx as usize])
            .collect();
        routes.insert(addrs[a.idx as usize], dsts);
    }
    let window = Arc::new(Window {
        start: AtomicU64::new(0),
        end: AtomicU64::new(0),
    });
    let start = Instant::now() + Duration::from_secs(1);
    let end = start + duration;
    let stop_at = end + Duration::from_millis(500);
    window.start.store(ns(start), Ordering::Relaxed);
    window.end.store(ns(end), Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let relay_thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("raw-relay".into())
            .spawn(move || relay_loop(relay_sock, routes, start, end, stop))
            .map_err(|e| e.to_string())?
    };
    let mut tasks = Vec::new();
    for (spec, sock) in specs.iter().zip(socks) {
        tasks.push(tokio::spawn(relay_device(
            spec.idx,
            sock,
            relay_addr,
            spec.video,
            pattern.clone(),
            video_pkts,
            window.clone(),
            end + Duration::from_millis(100),
            stop_at,
        )));
    }
    tokio::time::sleep_until(start.into()).await;
    let (tool0, drops0) = (
        stat_cpu_seconds("/proc/self/stat", ticks),
        udp_rcvbuf_errors(),
    );
    tokio::time::sleep_until(end.into()).await;
    let (tool1, drops1) = (
        stat_cpu_seconds("/proc/self/stat", ticks),
        udp_rcvbuf_errors(),
    );
    let udp_drops = drops0.zip(drops1).map(|(a, b)| b.saturating_sub(a));
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.map_err(|e| e.to_string())?);
    }
    stop.store(true, Ordering::Relaxed);
    let rs = relay_thread
        .join()
        .map_err(|_| "relay thread panicked".to_string())?;
    let secs = duration.as_secs_f64();
    let by_idx: HashMap<u32, &RelayDevResult> = results.iter().map(|r| (r.idx, r)).collect();
    let (mut expected, mut received) = (0u64, 0u64);
    for sub in specs {
        for publ in specs
            .iter()
            .filter(|p| p.session == sub.session && p.idx != sub.idx)
        {
            let sent = by_idx
                .get(&publ.idx)
                .map(|r| r.sent_win[AUDIO] + r.sent_win[VIDEO])
                .unwrap_or(0);
            let got = by_idx
                .get(&sub.idx)
                .and_then(|r| r.recv_win.get(&publ.idx))
                .copied()
                .unwrap_or(0);
            expected += sent;
            received += got.min(sent);
        }
    }
    let sent: u64 = results
        .iter()
        .map(|r| r.sent_win[AUDIO] + r.sent_win[VIDEO])
        .sum();
    let mut lat = Vec::new();
    for r in &results {
        lat.extend_from_slice(&r.lat_us);
    }
    let loss = 1.0 - ratio(received as f64, expected as f64);
    let per_cpu = ratio(rs.relayed_win as f64, rs.cpu_win_s);
    let tool = tool0.zip(tool1).map(|(a, b)| b - a - rs.cpu_win_s);
    let v = json!({
        "sent_pkts": sent,
        "sent_pps": round(sent as f64 / secs, 1),
        "relayed_pkts": rs.relayed_win,
        "relayed_pps": round(rs.relayed_win as f64 / secs, 1),
        "received_pkts": received,
        "expected_pkts": expected,
        "pkt_loss_pct": round(loss * 100.0, 3),
        "relay_cpu_s": round(rs.cpu_win_s, 3),
        "relay_cpu_pct": round(rs.cpu_win_s / secs * 100.0, 1),
        "relayed_pkts_per_cpu_s": round(per_cpu, 0),
        "send_errors": rs.send_errors,
        "udp_rcvbuf_errors": udp_drops,
        "latency": percentiles(lat),
        "tool_cpu_s_excluding_relay": tool.map(|t| round(t, 2)),
        "tool_skipped_slots": results.iter().map(|r| r.skipped).sum::<u64>(),
        "video_pkts_per_frame": [video_pkts.0, video_pkts.1],
        "fanout": m - 1,
    });
    println!(
        "--- raw UDP relay (measured {secs:.0}s, same pattern, fan-out {})",
        m - 1
    );
    println!(
        "senders {sent} pkts ({:.0}/s); relay thread relayed {} ({:.0}/s) using {:.2} CPU-s ({:.0} %): {per_cpu:.0} pkts per CPU-second; receivers got {received}/{expected} (loss {:.2} %), latency {}",
        sent as f64 / secs,
        rs.relayed_win,
        rs.relayed_win as f64 / secs,
        rs.cpu_win_s,
        rs.cpu_win_s / secs * 100.0,
        loss * 100.0,
        v["latency"]
    );
    let _ = rs.received_win;
    Ok(v)
}
