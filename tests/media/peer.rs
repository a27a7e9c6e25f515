//! The in-memory harness: a [`Net`] that owns one [`Engine`], N browser-like str0m clients
//! (each with a publish and a subscribe `Rtc`), a datagram queue with a fixed latency, a
//! virtual clock, and an emulation of `control` (members + rules → compile → diff →
//! `apply_routes`, and `StreamsChanged` → streams → recompile → `apply_routes`).
//!
//! Time is virtual: `Net::now` only moves when the harness advances it, to the earliest of the
//! next datagram delivery, engine or client timeout, or media tick. Nothing sleeps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay::domain::{
    MediaKinds, ParticipantId, ParticipantSubscription, SessionId, Subscriptions,
};
use patchbay::forwarding::{compile, ForwardingTable, Member, PublishedStream, SessionState};
use patchbay::media::{
    DeviceId, Engine, EngineConfig, EngineEvent, PublishAnswer, SourceKey, SubscribeOffer,
};
use patchbay::signaling::wire::{DataChannelMetadata, PublishMetadata, PublishedStreamMetadata};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelConfig;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// One-way delay of every datagram, unless a test sets `Net::latency`.
pub const LATENCY: Duration = Duration::from_millis(2);
/// Audio frame interval (Opus, 20 ms).
pub const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// Video frame interval (10 fps keeps the tests light).
pub const VIDEO_EVERY: Duration = Duration::from_millis(100);

/// First byte of our synthetic payloads: marks them as ours.
const MAGIC: u8 = 0xA5;

/// The kind a synthetic frame says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Audio,
    Video,
}

/// A synthetic frame: `[vp8 byte, MAGIC, origin, kind, counter (u32 BE), padding…]`.
///
/// The first byte is the first byte of a VP8 frame's payload header: bit 0 is the inverse key
/// frame flag (P), so `0x00` is a keyframe and `0x01` a delta frame. str0m's VP8 packetizer
/// prepends a payload descriptor (`0x10`: S=1, PID=0) and its depacketizer strips it, so the
/// bytes round-trip unchanged and `MediaData::is_keyframe` follows P. Opus is opaque to str0m.
pub fn frame(origin: u8, kind: Kind, counter: u32, keyframe: bool) -> Vec<u8> {
    let mut out = vec![
        if keyframe || kind == Kind::Audio {
            0x00
        } else {
            0x01
        },
        MAGIC,
        origin,
        kind as u8,
    ];
    out.extend_from_slice(&counter.to_be_bytes());
    out.resize(if kind == Kind::Audio { 60 } else { 300 }, 0x5A);
    out
}

/// Decodes a frame made by [`frame`].
pub fn decode(data: &[u8]) -> Option<(u8, Kind, u32, bool)> {
    if data.len() < 8 || data[1] != MAGIC {
        return None;
    }
    let kind = match data[3] {
        0 => Kind::Audio,
        1 => Kind::Video,
        _ => return None,
    };
    let counter = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    Some((data[2], kind, counter, data[0] & 1 == 0))
}

/// A frame a client received on its subscribe connection.
#[derive(Debug, Clone)]
pub struct Rx {
    pub at: Instant,
    pub mid: Mid,
    /// The m-line's kind, as negotiated.
    pub mid_kind: MediaKind,
    /// The MediaStream id the engine gave the m-line (`a=msid`).
    pub stream_id: String,
    pub origin: u8,
    pub kind: Kind,
    pub counter: u32,
    /// The VP8 payload header says keyframe (P=0); always true for audio.
    pub keyframe: bool,
    /// str0m's own view (`MediaData::is_keyframe`).
    pub str0m_keyframe: bool,
}

/// A datagram in flight.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub at: Instant,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
}

/// A browser-like device: a publish `Rtc` (it offers) and a subscribe `Rtc` (it answers the
/// engine's offers, str0m answers `a=setup:passive` to `actpass`). Both are non-lite.
pub struct Client {
    pub name: String,
    pub idx: u8,
    pub participant: ParticipantId,
    pub device: DeviceId,
    pub permissions: MediaKinds,
    pub publish: Rtc,
    pub subscribe: Rtc,
    pub pub_addr: SocketAddr,
    pub sub_addr: SocketAddr,
    pub pub_timeout: Instant,
    pub sub_timeout: Instant,
    pub pub_connected: bool,
    pub sub_connected: bool,
    pub msid: String,
    pub audio_mid: Option<Mid>,
    /// RFC 4733 payloads to send on the audio m-line at the next audio frames.
    pub dtmf: VecDeque<Vec<u8>>,
    pub video_mid: Option<Mid>,
    /// Publishing synthetic media when connected.
    pub sending: bool,
    pub next_audio: Instant,
    pub next_video: Instant,
    pub audio_sent: u32,
    pub video_sent: u32,
    /// Video frames written successfully.
    pub video_written: u32,
    /// The next video frame is a keyframe (first frame, or one was requested).
    pub force_keyframe: bool,
    /// Keyframe requests seen on the publish connection: (when, mid, kind).
    pub keyframe_requests: Vec<(Instant, Mid, KeyframeRequestKind)>,
    /// Every subscribe offer the engine sent this device, in order.
    pub offers: Vec<(Instant, SubscribeOffer)>,
    /// The offer waiting for this device's answer.
    pub outstanding: Option<SubscribeOffer>,
    /// Answer subscribe offers as soon as they arrive.
    pub auto_answer: bool,
    sub_channels_made: bool,
    pub received: Vec<Rx>,
    /// Non-synthetic or undecodable media on the subscribe side.
    pub foreign: usize,
    /// `MediaChanged` events on the subscribe connection.
    pub sub_media_changed: Vec<(Mid, Direction)>,
    pub channels_open: Vec<(bool, String)>,
    pub errors: Vec<String>,
    pub last_answer: Option<PublishAnswer>,
    /// One-way delay of this client's datagrams (copied from `Net::latency`).
    pub latency: Duration,
}

impl Client {
    pub fn new(
        name: &str,
        idx: u8,
        permissions: MediaKinds,
        device: DeviceId,
        now: Instant,
    ) -> Client {
        let pub_addr: SocketAddr = format!("10.0.{idx}.1:5000").parse().unwrap();
        let sub_addr: SocketAddr = format!("10.0.{idx}.2:5002").parse().unwrap();
        // Like a browser: Opus with telephone-event (RFC 4733) for DTMF.
        let mut builder = Rtc::builder();
        builder.codec_config().add_config(
            110.into(),
            None,
            Codec::Tele,
            Frequency::FORTY_EIGHT_KHZ,
            None,
            FormatParams::parse_line("0-16"),
        );
        let mut publish = builder.build(now);
        publish.add_local_candidate(Candidate::host(pub_addr, "udp").unwrap());
        let mut subscribe = Rtc::builder().build(now);
        subscribe.add_local_candidate(Candidate::host(sub_addr, "udp").unwrap());
        Client {
            name: name.to_owned(),
            idx,
            participant: ParticipantId::random(),
            device,
            permissions,
            publish,
            subscribe,
            pub_addr,
            sub_addr,
            pub_timeout: now,
            sub_timeout: now,
            pub_connected: false,
            sub_connected: false,
            msid: format!("stream-{name}"),
            audio_mid: None,
            dtmf: VecDeque::new(),
            video_mid: None,
            sending: true,
            next_audio: now,
            next_video: now,
            audio_sent: 0,
            video_sent: 0,
            video_written: 0,
            force_keyframe: true,
            keyframe_requests: Vec::new(),
            offers: Vec::new(),
            outstanding: None,
            auto_answer: true,
            sub_channels_made: false,
            received: Vec::new(),
            foreign: 0,
            sub_media_changed: Vec::new(),
            channels_open: Vec::new(),
            errors: Vec::new(),
            last_answer: None,
            latency: LATENCY,
        }
    }

    /// Runs one of the client's `Rtc`s to completion.
    pub fn drain(&mut self, subscribe: bool, now: Instant, queue: &mut VecDeque<Datagram>) {
        let latency = self.latency;
        let mut events = Vec::new();
        let rtc = if subscribe {
            &mut self.subscribe
        } else {
            &mut self.publish
        };
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if subscribe {
                        self.sub_timeout = t;
                    } else {
                        self.pub_timeout = t;
                    }
                    break;
                }
                Ok(Output::Transmit(t)) => enqueue(
                    queue,
                    Datagram {
                        at: now + latency,
                        from: t.source,
                        to: t.destination,
                        data: t.contents.to_vec(),
                    },
                ),
                Ok(Output::Event(e)) => events.push(e),
                Err(e) => {
                    self.errors
                        .push(format!("{} {}: {e}", self.name, side(subscribe)));
                    if subscribe {
                        self.sub_timeout = now + Duration::from_secs(3600);
                    } else {
                        self.pub_timeout = now + Duration::from_secs(3600);
                    }
                    break;
                }
            }
        }
        for e in events {
            self.on_event(subscribe, e, now);
        }
    }

    fn on_event(&mut self, subscribe: bool, event: Event, now: Instant) {
        match event {
            Event::Connected if subscribe => self.sub_connected = true,
            Event::Connected => self.pub_connected = true,
            Event::KeyframeRequest(req) if !subscribe => {
                self.keyframe_requests.push((now, req.mid, req.kind));
                self.force_keyframe = true;
            }
            Event::MediaData(data) if subscribe => {
                let media = self.subscribe.media(data.mid);
                let mid_kind = media.map(|m| m.kind()).unwrap_or(MediaKind::Audio);
                let stream_id = media.map(|m| m.stream_id().to_owned()).unwrap_or_default();
                match decode(&data.data) {
                    Some((origin, kind, counter, keyframe)) => self.received.push(Rx {
                        at: now,
                        mid: data.mid,
                        mid_kind,
                        stream_id,
                        origin,
                        kind,
                        counter,
                        keyframe,
                        str0m_keyframe: data.is_keyframe(),
                    }),
                    None => self.foreign += 1,
                }
            }
            Event::MediaChanged(c) if subscribe => {
                self.sub_media_changed.push((c.mid, c.direction))
            }
            Event::ChannelOpen(_, label) => self.channels_open.push((subscribe, label)),
            _ => {}
        }
    }

    pub fn feed(&mut self, dgram: &Datagram, now: Instant, queue: &mut VecDeque<Datagram>) {
        let subscribe = dgram.to == self.sub_addr;
        let Ok(receive) = Receive::new(Protocol::Udp, dgram.from, dgram.to, &dgram.data) else {
            self.errors
                .push(format!("{}: unparsable datagram", self.name));
            return;
        };
        let rtc = if subscribe {
            &mut self.subscribe
        } else {
            &mut self.publish
        };
        if let Err(e) = rtc.handle_input(Input::Receive(now, receive)) {
            self.errors
                .push(format!("{} {} input: {e}", self.name, side(subscribe)));
        }
        self.drain(subscribe, now, queue);
    }

    pub fn timeouts(&mut self, now: Instant, queue: &mut VecDeque<Datagram>) {
        for subscribe in [false, true] {
            let due = if subscribe {
                self.sub_timeout
            } else {
                self.pub_timeout
            };
            if due <= now {
                let rtc = if subscribe {
                    &mut self.subscribe
                } else {
                    &mut self.publish
                };
                if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                    self.errors
                        .push(format!("{} {} timeout: {e}", self.name, side(subscribe)));
                }
                self.drain(subscribe, now, queue);
            }
        }
    }

    /// The next instant this client needs attention.
    pub fn next_wakeup(&self) -> Instant {
        let mut t = self.pub_timeout.min(self.sub_timeout);
        if self.sending && self.pub_connected {
            if self.audio_mid.is_some() {
                t = t.min(self.next_audio);
            }
            if self.video_mid.is_some() {
                t = t.min(self.next_video);
            }
        }
        t
    }

    /// Writes the synthetic frames that are due.
    pub fn tick_media(&mut self, now: Instant, queue: &mut VecDeque<Datagram>) {
        if !self.sending || !self.pub_connected {
            return;
        }
        let mut wrote = false;
        if let Some(mid) = self.audio_mid {
            while self.next_audio <= now {
                let n = self.audio_sent;
                let data = frame(self.idx, Kind::Audio, n, true);
                let t = MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ);
                write_frame(&mut self.publish, mid, Codec::Opus, t, data, now);
                if let Some(event) = self.dtmf.pop_front() {
                    write_frame(&mut self.publish, mid, Codec::Tele, t, event, now);
                }
                self.audio_sent += 1;
                self.next_audio += AUDIO_EVERY;
                wrote = true;
            }
        }
        if let Some(mid) = self.video_mid {
            while self.next_video <= now {
                let n = self.video_sent;
                let key = std::mem::take(&mut self.force_keyframe);
                let data = frame(self.idx, Kind::Video, n, key);
                let t = MediaTime::new(u64::from(n) * 9000, Frequency::NINETY_KHZ);
                if write_frame(&mut self.publish, mid, Codec::Vp8, t, data, now) {
                    self.video_written += 1;
                } else if key {
                    self.force_keyframe = true;
                }
                self.video_sent += 1;
                self.next_video += VIDEO_EVERY;
                wrote = true;
            }
        }
        if wrote {
            self.drain(false, now, queue);
        }
    }

    /// The SDK's first publish offer: data channels only. Returns the SDP, the pending offer
    /// and the metadata to send with it.
    pub fn data_channel_offer(
        &mut self,
        now: Instant,
    ) -> (String, SdpPendingOffer, PublishMetadata) {
        self.publish.handle_input(Input::Timeout(now)).unwrap();
        let mut api = self.publish.sdp_api();
        api.add_channel_with_config(builtin_channel(0, "__heartbeat__"));
        api.add_channel_with_config(builtin_channel(1, "__diagnostics__"));
        let (offer, pending) = api.apply().expect("a data channel offer");
        let metadata = PublishMetadata {
            media_streams: BTreeMap::new(),
            data_channels: builtin_channels(),
        };
        (offer.to_sdp_string(), pending, metadata)
    }

    /// The SDK's second publish offer: sendonly tracks of one MediaStream.
    pub fn media_offer(
        &mut self,
        audio: bool,
        video: bool,
        alias: Option<&str>,
    ) -> (String, SdpPendingOffer, PublishMetadata) {
        let msid = self.msid.clone();
        let mut api = self.publish.sdp_api();
        if audio {
            self.audio_mid = Some(api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(msid.clone()),
                Some(format!("{msid}-audio")),
                None,
            ));
        }
        if video {
            self.video_mid = Some(api.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                Some(msid.clone()),
                Some(format!("{msid}-video")),
                None,
            ));
        }
        let (offer, pending) = api.apply().expect("a media offer");
        let metadata = stream_metadata(msid, alias, builtin_channels());
        (offer.to_sdp_string(), pending, metadata)
    }

    /// Applies the engine's answer to a publish offer.
    pub fn accept_publish_answer(
        &mut self,
        pending: SdpPendingOffer,
        answer: &PublishAnswer,
        now: Instant,
        queue: &mut VecDeque<Datagram>,
    ) {
        let sdp = SdpAnswer::from_sdp_string(&answer.sdp_answer).expect("a parsable answer");
        self.publish
            .sdp_api()
            .accept_answer(pending, sdp)
            .expect("the client accepts the engine's answer");
        self.drain(false, now, queue);
    }

    /// Answers the outstanding subscribe offer: the answer's SDP, and the protocol violation
    /// it shows, if any.
    pub fn answer_outstanding(
        &mut self,
        now: Instant,
        queue: &mut VecDeque<Datagram>,
    ) -> (String, Option<String>) {
        let offer = self.outstanding.take().expect("an outstanding offer");
        self.subscribe.handle_input(Input::Timeout(now)).unwrap();
        let parsed = SdpOffer::from_sdp_string(&offer.sdp_offer).expect("a parsable offer");
        let answer = self
            .subscribe
            .sdp_api()
            .accept_offer(parsed)
            .expect("the client accepts the engine's offer");
        if !self.sub_channels_made {
            self.sub_channels_made = true;
            for (id, label) in [(0, "__heartbeat__"), (1, "__diagnostics__")] {
                self.subscribe
                    .direct_api()
                    .create_data_channel(builtin_channel(id, label));
            }
        }
        let sdp = answer.to_sdp_string();
        self.drain(true, now, queue);
        let violation = sdp
            .lines()
            .any(|l| l.starts_with("a=setup:") && l.trim_end() != "a=setup:passive")
            .then(|| format!("{}: the subscribe answer is not setup:passive", self.name));
        (sdp, violation)
    }

    /// Frames received at or after `since`.
    pub fn rx_since(&self, since: Instant) -> impl Iterator<Item = &Rx> + '_ {
        self.received.iter().filter(move |r| r.at >= since)
    }

    /// Origins of `kind` frames received at or after `since`.
    pub fn origins(&self, kind: Kind, since: Instant) -> BTreeSet<u8> {
        self.rx_since(since)
            .filter(|r| r.kind == kind)
            .map(|r| r.origin)
            .collect()
    }

    /// How many `kind` frames from `origin` arrived at or after `since`.
    pub fn count(&self, origin: u8, kind: Kind, since: Instant) -> usize {
        self.rx_since(since)
            .filter(|r| r.kind == kind && r.origin == origin)
            .count()
    }

    /// The subscribe mids that carried frames from `origin`.
    pub fn mids_from(&self, origin: u8) -> BTreeSet<String> {
        self.received
            .iter()
            .filter(|r| r.origin == origin)
            .map(|r| r.mid.to_string())
            .collect()
    }
}

/// Keeps the queue ordered by delivery time (FIFO among equal times).
pub fn enqueue(queue: &mut VecDeque<Datagram>, d: Datagram) {
    let pos = queue.partition_point(|x| x.at <= d.at);
    queue.insert(pos, d);
}

fn side(subscribe: bool) -> &'static str {
    if subscribe {
        "subscribe"
    } else {
        "publish"
    }
}

fn write_frame(
    rtc: &mut Rtc,
    mid: Mid,
    codec: Codec,
    time: MediaTime,
    data: Vec<u8>,
    now: Instant,
) -> bool {
    let Some(writer) = rtc.writer(mid) else {
        return false;
    };
    let Some(pt) = writer
        .payload_params()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
    else {
        return false;
    };
    writer.write(pt, now, time, data).is_ok()
}

/// Publish metadata for one MediaStream `msid` and these data channels.
fn stream_metadata(
    msid: String,
    alias: Option<&str>,
    data_channels: BTreeMap<String, DataChannelMetadata>,
) -> PublishMetadata {
    let stream = PublishedStreamMetadata {
        alias: alias.map(str::to_owned),
    };
    PublishMetadata {
        media_streams: [(msid, stream)].into_iter().collect(),
        data_channels,
    }
}

/// The virtual clock's next reading: `next` (the earliest thing due), but always forward (a
/// timer already due is served at the next tick) and never past `limit`.
pub fn advance(now: Instant, next: Instant, limit: Instant) -> Instant {
    next.max(now + Duration::from_micros(200))
        .min(limit.max(now))
}

/// The SDK's two pre-negotiated data channels, as publish metadata.
fn builtin_channels() -> BTreeMap<String, DataChannelMetadata> {
    [(0u16, "__heartbeat__"), (1, "__diagnostics__")]
        .into_iter()
        .map(|(id, label)| {
            (
                label.to_owned(),
                DataChannelMetadata {
                    label: label.to_owned(),
                    stream_id: id,
                },
            )
        })
        .collect()
}

fn builtin_channel(id: u16, label: &str) -> ChannelConfig {
    ChannelConfig {
        label: label.to_owned(),
        negotiated: Some(id),
        protocol: "udp".to_owned(),
        ..Default::default()
    }
}

/// The streams declared in `metadata`, as the signalling layer hands them to the engine.
pub fn declared(metadata: &PublishMetadata) -> patchbay::media::DeclaredStreams {
    metadata
        .declared_streams()
        .expect("the test declares valid aliases")
}

/// `control`, reduced to what routes need: members with rules, published streams, the table.
pub struct Control {
    pub session: SessionId,
    pub members: BTreeMap<ParticipantId, Member>,
    pub streams: BTreeMap<ParticipantId, Vec<PublishedStream>>,
    pub table: ForwardingTable,
}

impl Control {
    fn state(&self) -> SessionState {
        SessionState {
            session: Some(self.session),
            members: self.members.values().cloned().collect(),
            streams: self.streams.values().flatten().cloned().collect(),
        }
    }

    /// compile → diff → apply_routes, like control does after every change.
    fn recompile(&mut self, engine: &mut Engine, now: Instant) {
        let new = compile(&self.state());
        let diff = self.table.diff(&new);
        if !diff.is_empty() {
            engine.apply_routes(self.session, &diff, now);
        }
        self.table = new;
    }
}

/// Who a member subscribes to.
pub enum Rules {
    /// The whole session (`sessionId`).
    Session,
    /// Exactly these clients (indices into `Net::clients`).
    Only(Vec<usize>),
    /// Nothing.
    Nothing,
}

/// An engine event the harness saw, with when.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub event: EngineEvent,
}

/// The engine, its clients, the wire and control, on one virtual clock.
pub struct Net {
    pub start: Instant,
    pub now: Instant,
    pub engine: Engine,
    pub engine_addr: SocketAddr,
    pub clients: Vec<Client>,
    pub queue: VecDeque<Datagram>,
    pub control: Control,
    pub events: Vec<Seen>,
    /// Protocol violations seen by the harness (offer while one is pending, revision not
    /// increasing, answer rejected...).
    pub violations: Vec<String>,
    /// Copies of every client→engine datagram (for replay/garbage tests), when enabled.
    pub tap: Option<Vec<Datagram>>,
    /// Datagrams to addresses nobody owns.
    pub undeliverable: usize,
    /// One-way delay of every datagram from now on (clients added later inherit it).
    pub latency: Duration,
    /// Frames handed to local devices (phones): when, to whom, from which source, DTMF or not.
    pub local_frames: Vec<(Instant, DeviceId, SourceKey, bool, Vec<u8>)>,
    /// The sources each local device receives, as last told.
    pub local_sources: BTreeMap<DeviceId, Vec<SourceKey>>,
    next_device: u64,
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        let start = Instant::now();
        let engine_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let engine = Engine::new(EngineConfig::generate(engine_addr).expect("engine config"));
        Net {
            start,
            now: start,
            engine,
            engine_addr,
            clients: Vec::new(),
            queue: VecDeque::new(),
            control: Control {
                session: SessionId::random(),
                members: BTreeMap::new(),
                streams: BTreeMap::new(),
                table: ForwardingTable::default(),
            },
            events: Vec::new(),
            violations: Vec::new(),
            tap: None,
            undeliverable: 0,
            latency: LATENCY,
            local_frames: Vec::new(),
            local_sources: BTreeMap::new(),
            next_device: 1,
        }
    }

    /// A device connects for a new participant (`Engine::add_device`). Not a member yet.
    pub fn add_client(&mut self, name: &str, permissions: MediaKinds) -> usize {
        let idx = self.clients.len();
        let device = DeviceId(self.next_device);
        self.next_device += 1;
        let mut client = Client::new(name, idx as u8 + 1, permissions, device, self.now);
        client.latency = self.latency;
        let replaced = self
            .engine
            .add_device(device, client.participant, permissions, self.now);
        assert_eq!(replaced, None);
        self.clients.push(client);
        self.pump();
        idx
    }

    /// The participant's device reconnects: a new device (new `Rtc`s, same participant and
    /// addresses) replaces the old one in the engine. Returns the replaced device.
    pub fn reconnect(&mut self, client: usize) -> Option<DeviceId> {
        let device = DeviceId(self.next_device);
        self.next_device += 1;
        let old = &self.clients[client];
        let mut fresh = Client::new(&old.name, old.idx, old.permissions, device, self.now);
        fresh.participant = old.participant;
        // Frame counters go on, so receivers can still check order per source.
        fresh.audio_sent = old.audio_sent;
        fresh.video_sent = old.video_sent;
        fresh.latency = self.latency;
        // Datagrams still in flight to the old connections are lost.
        let (pub_addr, sub_addr) = (old.pub_addr, old.sub_addr);
        self.queue.retain(|d| d.to != pub_addr && d.to != sub_addr);
        self.clients[client] = fresh;
        let replaced = self.engine.add_device(
            device,
            self.clients[client].participant,
            self.clients[client].permissions,
            self.now,
        );
        self.pump();
        replaced
    }

    /// A phone joins as a local device of a new participant, subscribed per `rules` to the
    /// clients. Returns its participant and device.
    pub fn add_phone(&mut self, rules: Rules) -> (ParticipantId, DeviceId) {
        let participant = ParticipantId::random();
        let device = DeviceId(self.next_device);
        self.next_device += 1;
        let stream = patchbay::domain::StreamId::parse("phone-stream").unwrap();
        let alias = patchbay::domain::StreamAlias::parse("phone").ok();
        let replaced = self
            .engine
            .add_local_device(device, participant, stream, alias, self.now);
        assert_eq!(replaced, None);
        self.pump();
        let subscriptions = self.subscriptions(&rules);
        self.control.members.insert(
            participant,
            Member {
                id: participant,
                publish: MediaKinds::AUDIO,
                subscriptions,
            },
        );
        self.control.recompile(&mut self.engine, self.now);
        self.pump();
        (participant, device)
    }

    /// Changes the rules of a phone added with [`Net::add_phone`].
    pub fn set_phone_rules(&mut self, participant: ParticipantId, rules: Rules) {
        let subscriptions = self.subscriptions(&rules);
        if let Some(m) = self.control.members.get_mut(&participant) {
            m.subscriptions = subscriptions;
        }
        self.control.recompile(&mut self.engine, self.now);
        self.pump();
    }

    /// The client's index as written into its frames.
    pub fn id(&self, client: usize) -> u8 {
        self.clients[client].idx
    }

    pub fn ids(&self, clients: &[usize]) -> BTreeSet<u8> {
        clients.iter().map(|&c| self.id(c)).collect()
    }

    fn subscriptions(&self, rules: &Rules) -> Subscriptions {
        match rules {
            Rules::Session => Subscriptions::new(Some(self.control.session), vec![]).unwrap(),
            Rules::Nothing => Subscriptions::default(),
            Rules::Only(list) => Subscriptions::new(
                None,
                list.iter()
                    .map(|&c| ParticipantSubscription {
                        participant: self.clients[c].participant,
                        stream_aliases: vec![],
                    })
                    .collect(),
            )
            .unwrap(),
        }
    }

    /// Adds the client to the session with these rules, or changes its rules.
    pub fn set_rules(&mut self, client: usize, rules: Rules) {
        let subscriptions = self.subscriptions(&rules);
        let c = &self.clients[client];
        self.control.members.insert(
            c.participant,
            Member {
                id: c.participant,
                publish: c.permissions,
                subscriptions,
            },
        );
        self.control.recompile(&mut self.engine, self.now);
        self.pump();
    }

    /// The device's two publish offers, like the SDK: first data channels only, then the
    /// tracks. Returns the engine's answer to the second one.
    pub fn publish(
        &mut self,
        client: usize,
        audio: bool,
        video: bool,
        alias: Option<&str>,
    ) -> PublishAnswer {
        let now = self.now;
        let device = self.clients[client].device;
        // Round 1: m=application only.
        let (offer, pending, metadata) = self.clients[client].data_channel_offer(now);
        let answer = self
            .engine
            .handle_publish_offer(device, &offer, &declared(&metadata), now)
            .expect("the engine answers the data channel offer");
        self.accept_publish_answer(client, pending, &answer);
        self.pump();

        // Round 2: sendonly tracks of one MediaStream.
        let (offer, pending, metadata) = self.clients[client].media_offer(audio, video, alias);
        let answer = self
            .engine
            .handle_publish_offer(device, &offer, &declared(&metadata), self.now)
            .expect("the engine answers the media offer");
        self.accept_publish_answer(client, pending, &answer);
        self.clients[client].last_answer = Some(answer.clone());
        self.pump();
        answer
    }

    /// A later publish re-offer (the SDK re-offers when tracks are added or stopped):
    /// `change` edits the publish connection, then the engine answers. Same stream metadata.
    pub fn republish(
        &mut self,
        client: usize,
        alias: Option<&str>,
        change: impl FnOnce(&mut str0m::change::SdpApi<'_>, &str) -> Option<Mid>,
    ) -> (Option<Mid>, PublishAnswer) {
        let now = self.now;
        let c = &mut self.clients[client];
        c.publish.handle_input(Input::Timeout(now)).unwrap();
        let msid = c.msid.clone();
        let device = c.device;
        let mut api = c.publish.sdp_api();
        let added = change(&mut api, &msid);
        let (offer, pending) = api.apply().expect("a publish re-offer");
        let metadata = stream_metadata(msid, alias, BTreeMap::new());
        let answer = self
            .engine
            .handle_publish_offer(device, &offer.to_sdp_string(), &declared(&metadata), now)
            .expect("the engine answers the re-offer");
        self.accept_publish_answer(client, pending, &answer);
        self.clients[client].last_answer = Some(answer.clone());
        self.pump();
        (added, answer)
    }

    fn accept_publish_answer(
        &mut self,
        client: usize,
        pending: SdpPendingOffer,
        answer: &PublishAnswer,
    ) {
        let now = self.now;
        self.clients[client].accept_publish_answer(pending, answer, now, &mut self.queue);
    }

    /// Answers the client's outstanding subscribe offer.
    pub fn answer(&mut self, client: usize) {
        let now = self.now;
        let c = &mut self.clients[client];
        let device = c.device;
        let (sdp, violation) = c.answer_outstanding(now, &mut self.queue);
        self.violations.extend(violation);
        if let Err(e) = self.engine.handle_subscribe_answer(device, &sdp, now) {
            self.violations.push(format!(
                "{}: the engine refused the answer: {e}",
                self.clients[client].name
            ));
        }
        self.pump();
    }

    /// Removes the client's device (`Engine::remove_device`). Its `Rtc`s keep running (and
    /// sending): the engine must ignore them.
    pub fn remove_device(&mut self, client: usize) {
        let device = self.clients[client].device;
        self.engine.remove_device(device, self.now);
        self.pump();
    }

    /// A datagram arriving at the engine from `from`, outside the simulated clients.
    pub fn inject(&mut self, from: SocketAddr, data: &[u8]) {
        self.engine
            .handle_receive(from, self.engine_addr, data, self.now);
        self.pump();
    }

    /// Drains the engine's transmits and events, reacting like the driver and control. The
    /// engine's incrementally kept fan-out is compared with a rebuild every time.
    pub fn pump(&mut self) {
        if let Err(e) = self.engine.check_fanout() {
            self.violations.push(e);
        }
        loop {
            while let Some(t) = self.engine.poll_transmit() {
                enqueue(
                    &mut self.queue,
                    Datagram {
                        at: self.now + self.latency,
                        from: self.engine_addr,
                        to: t.destination,
                        data: t.contents,
                    },
                );
            }
            let Some(event) = self.engine.poll_event() else {
                break;
            };
            self.events.push(Seen {
                at: self.now,
                event: event.clone(),
            });
            match event {
                EngineEvent::SubscribeOffer { device, offer } => {
                    let Some(i) = self.clients.iter().position(|c| c.device == device) else {
                        self.violations
                            .push(format!("offer for unknown device {device:?}"));
                        continue;
                    };
                    let c = &mut self.clients[i];
                    if c.outstanding.is_some() {
                        self.violations
                            .push(format!("{}: offer sent while another is pending", c.name));
                    }
                    if let Some((_, last)) = c.offers.last() {
                        if offer.sdp_revision <= last.sdp_revision {
                            self.violations.push(format!(
                                "{}: revision {} after {}",
                                c.name, offer.sdp_revision, last.sdp_revision
                            ));
                        }
                    }
                    c.offers.push((self.now, offer.clone()));
                    c.outstanding = Some(offer);
                    if c.auto_answer {
                        self.answer(i);
                    }
                }
                EngineEvent::StreamsChanged {
                    participant,
                    streams,
                    ..
                } => {
                    self.control.streams.insert(participant, streams);
                    self.control.recompile(&mut self.engine, self.now);
                }
                EngineEvent::Connected { .. } => {}
                EngineEvent::LocalMedia {
                    device,
                    source,
                    dtmf,
                    data,
                    ..
                } => self
                    .local_frames
                    .push((self.now, device, source, dtmf, data.to_vec())),
                EngineEvent::LocalSources { device, sources } => {
                    self.local_sources.insert(device, sources);
                }
            }
        }
    }

    /// Advances the virtual clock by `d`, delivering datagrams and firing timers on the way.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end);
        }
    }

    fn step(&mut self, limit: Instant) {
        let mut next = limit;
        if let Some(d) = self.queue.front() {
            next = next.min(d.at);
        }
        if let Some(t) = self.engine.poll_timeout() {
            next = next.min(t);
        }
        for c in &self.clients {
            next = next.min(c.next_wakeup());
        }
        self.now = advance(self.now, next, limit);
        let now = self.now;

        while self.queue.front().is_some_and(|d| d.at <= now) {
            let dgram = self.queue.pop_front().unwrap();
            if dgram.to == self.engine_addr {
                if let Some(tap) = &mut self.tap {
                    tap.push(dgram.clone());
                }
                self.engine
                    .handle_receive(dgram.from, dgram.to, &dgram.data, now);
                self.pump();
            } else if let Some(c) = self
                .clients
                .iter_mut()
                .find(|c| c.pub_addr == dgram.to || c.sub_addr == dgram.to)
            {
                c.feed(&dgram, now, &mut self.queue);
            } else {
                self.undeliverable += 1;
            }
        }
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            self.pump();
        }
        for c in &mut self.clients {
            c.timeouts(now, &mut self.queue);
            c.tick_media(now, &mut self.queue);
        }
    }

    /// Every engine event of a kind, for assertions.
    pub fn streams_changed(&self) -> Vec<(Instant, DeviceId, ParticipantId, Vec<PublishedStream>)> {
        self.events
            .iter()
            .filter_map(|s| match &s.event {
                EngineEvent::StreamsChanged {
                    device,
                    participant,
                    streams,
                } => Some((s.at, *device, *participant, streams.clone())),
                _ => None,
            })
            .collect()
    }

    /// Fails the test on any harness-detected violation or client error.
    pub fn assert_clean(&self) {
        assert!(
            self.violations.is_empty(),
            "violations: {:#?}",
            self.violations
        );
        for c in &self.clients {
            assert!(c.errors.is_empty(), "{} errors: {:#?}", c.name, c.errors);
            assert_eq!(c.foreign, 0, "{} received media that is not ours", c.name);
            // Per source and kind, frames arrive once and in order.
            let mut last: BTreeMap<(u8, Kind), u32> = BTreeMap::new();
            for rx in &c.received {
                if let Some(prev) = last.insert((rx.origin, rx.kind), rx.counter) {
                    assert!(
                        rx.counter > prev,
                        "{}: {:?} frame {} from {} after {prev}",
                        c.name,
                        rx.kind,
                        rx.counter,
                        rx.origin
                    );
                }
            }
        }
    }
}

/// `a=mid` → direction (`sendonly`, `recvonly`, `sendrecv`, `inactive`, or `rejected` for
/// port 0) of every m-section of an SDP.
pub fn sdp_directions(sdp: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for section in sdp.split("\nm=").skip(1) {
        let port_zero = section.split_whitespace().nth(1) == Some("0");
        let mut mid = None;
        let mut dir = None;
        for line in section.lines() {
            let line = line.trim_end();
            if let Some(m) = line.strip_prefix("a=mid:") {
                mid = Some(m.to_owned());
            }
            if let Some(d) = line
                .strip_prefix("a=")
                .filter(|d| ["sendonly", "recvonly", "sendrecv", "inactive"].contains(d))
            {
                dir = Some(d.to_owned());
            }
        }
        if let Some(mid) = mid {
            let dir = if port_zero {
                "rejected".to_owned()
            } else {
                dir.unwrap_or_else(|| "sendrecv".to_owned())
            };
            out.insert(mid, dir);
        }
    }
    out
}
