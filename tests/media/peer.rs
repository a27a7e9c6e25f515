//! The in-memory harness: a [`Net`] that owns one [`Engine`], N browser-like str0m clients
//! (the test kit's [`Client`], each with a publish and a subscribe `Rtc`), a datagram queue with a fixed latency, a
//! virtual clock, and an emulation of `control` (members + rules → compile → diff →
//! `apply_routes`, and `StreamsChanged` → streams → recompile → `apply_routes`).
//!
//! Time is virtual: `Net::now` only moves when the harness advances it, to the earliest of the
//! next datagram delivery, engine or client timeout, or media tick. Nothing sleeps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay::domain::{
    MediaKinds, ParticipantId, ParticipantSubscription, SessionId, SubscribeLayout, Subscriptions,
};
use patchbay::forwarding::{compile, ForwardingTable, Member, PublishedStream, SessionState};
use patchbay::media::{DeviceId, Engine, EngineConfig, EngineEvent, PublishAnswer, SourceKey};
use str0m::change::SdpPendingOffer;
use str0m::media::Mid;
use str0m::Input;

pub use patchbay_testkit::browser::{advance, declared, enqueue, Client, Datagram, LATENCY};
pub use patchbay_testkit::frames::{decode, frame, Kind};

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
    /// The clear-text RTP header of every SRTP packet delivered to a client's subscribe
    /// connection, in delivery order (SRTP encrypts only the payload).
    pub wire: Vec<WireRtp>,
    /// Loses every n-th original SRTP packet (neither a retransmission nor a probe's padding)
    /// towards this client's subscribe connection: (client, n). Retransmissions always get
    /// through: how often a receiver asks again for a resend lost too is the receiver's affair.
    pub lossy: Option<(usize, usize)>,
    /// Polices the RTP towards this client's subscribe connection to this many bits per
    /// second (a token bucket of 200 ms, at least one full datagram; what exceeds it is dropped, as a thin link drops what
    /// its queue cannot hold): (client, bits per second).
    pub thin: Option<(usize, u64)>,
    /// The bucket of `thin`: bytes available, as of when.
    thin_bucket: (f64, Instant),
    /// The subscribe layout each device was last offered (what the store would keep).
    pub layouts: BTreeMap<DeviceId, SubscribeLayout>,
    /// Packets lost that way.
    pub lost: usize,
    next_device: u64,
}

/// An RTP header seen on the wire towards a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireRtp {
    pub at: Instant,
    /// The receiving client (index into `Net::clients`).
    pub client: usize,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    /// The padding bit: a packet that ends in padding (a bandwidth probe carries nothing else).
    pub padding: bool,
}

impl WireRtp {
    /// The RTP header of an SRTP packet; `None` for STUN, DTLS and SRTCP (RFC 7983, RFC 5761).
    pub fn parse(at: Instant, client: usize, data: &[u8]) -> Option<WireRtp> {
        if data.len() < 12 || !(128..=191).contains(&data[0]) || (192..=223).contains(&data[1]) {
            return None;
        }
        Some(WireRtp {
            at,
            client,
            marker: data[1] & 0x80 != 0,
            padding: data[0] & 0x20 != 0,
            pt: data[1] & 0x7f,
            seq: u16::from_be_bytes([data[2], data[3]]),
            ts: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            ssrc: u32::from_be_bytes([data[8], data[9], data[10], data[11]]),
        })
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        Net::with_config(|_| {})
    }

    /// A net whose engine is configured by `configure` first (from the defaults).
    pub fn with_config(configure: impl FnOnce(&mut EngineConfig)) -> Net {
        let start = Instant::now();
        let engine_addr: SocketAddr = "192.0.2.1:3478".parse().unwrap();
        let mut config = EngineConfig::generate(engine_addr).expect("engine config");
        configure(&mut config);
        let engine = Engine::new(config);
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
            wire: Vec::new(),
            lossy: None,
            thin: None,
            thin_bucket: (0.0, start),
            layouts: BTreeMap::new(),
            lost: 0,
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
        self.engine
            .resume_subscriber(device, format!("sdk-{name}"), None);
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
            .handle_publish_offer(device, &offer, &metadata, now)
            .expect("the engine answers the data channel offer");
        self.accept_publish_answer(client, pending, &answer);
        self.pump();

        // Round 2: sendonly tracks of one MediaStream.
        let (offer, pending, metadata) = self.clients[client].media_offer(audio, video, alias);
        let answer = self
            .engine
            .handle_publish_offer(device, &offer, &metadata, self.now)
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
        let metadata = declared(msid, alias);
        let answer = self
            .engine
            .handle_publish_offer(device, &offer.to_sdp_string(), &metadata, now)
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
                EngineEvent::SubscribeOffer {
                    device,
                    offer,
                    layout,
                } => {
                    self.layouts.insert(device, layout);
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
                EngineEvent::Connected { .. } | EngineEvent::ActiveSpeaker(_) => {}
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
                // Kept in `events`; the driver's reaction is the shard's (tests/media/shard.rs).
                EngineEvent::Unanswered { .. } => {}
                // Stored by the runtime for the next process; nothing to emulate here.
                EngineEvent::PublishCredentials { .. } => {}
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
            } else if let Some((i, c)) = self
                .clients
                .iter_mut()
                .enumerate()
                .find(|(_, c)| c.pub_addr == dgram.to || c.sub_addr == dgram.to)
            {
                if dgram.to == c.sub_addr {
                    if let Some(rtp) = WireRtp::parse(now, i, &dgram.data) {
                        self.wire.push(rtp);
                        let rtx: Vec<u8> = c
                            .subscribe
                            .codec_config()
                            .params()
                            .iter()
                            .filter_map(|p| p.resend().map(|pt| *pt))
                            .collect();
                        let original = |w: &WireRtp| !w.padding && !rtx.contains(&w.pt);
                        let seen = self
                            .wire
                            .iter()
                            .filter(|w| w.client == i && original(w))
                            .count();
                        if original(&rtp)
                            && self
                                .lossy
                                .is_some_and(|(client, n)| client == i && seen % n == 0)
                        {
                            self.lost += 1;
                            continue;
                        }
                        if let Some((_, bps)) = self.thin.filter(|(client, _)| *client == i) {
                            let (bytes, at) = self.thin_bucket;
                            let depth = (bps as f64 / 8.0 * 0.2).max(1500.0);
                            let elapsed = now.saturating_duration_since(at).as_secs_f64();
                            let bytes = (bytes + elapsed * bps as f64 / 8.0).min(depth);
                            let size = dgram.data.len() as f64;
                            if bytes < size {
                                self.thin_bucket = (bytes, now);
                                self.lost += 1;
                                continue;
                            }
                            self.thin_bucket = (bytes - size, now);
                        }
                    }
                }
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
