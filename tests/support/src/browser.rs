//! The browser-like device of the in-memory media tests: a publish and a subscribe str0m
//! `Rtc` on made-up addresses, its datagrams queued on a virtual clock for a harness to
//! deliver, publishing synthetic [`frames`](crate::frames) and recording what it receives.
//! The harness (`tests/media`) owns the engine, the wire and the clock; this is the device.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay::domain::StreamAlias;
use patchbay::domain::{MediaKinds, ParticipantId};
use patchbay::media::{DeclaredStreams, DeviceId, PublishAnswer, SubscribeOffer};
use str0m::bwe::BweKind;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::{Candidate, Event, Input, Rtc};

use crate::frames::{decode, frame, Kind};
use crate::rtc::{self, side, write_frame};

/// One-way delay of every datagram, unless a test sets `Net::latency`.
pub const LATENCY: Duration = Duration::from_millis(2);
/// Audio frame interval (Opus, 20 ms).
pub const AUDIO_EVERY: Duration = Duration::from_millis(20);
/// Video frame interval (10 fps keeps the tests light).
pub const VIDEO_EVERY: Duration = Duration::from_millis(100);

/// A frame a client received on its subscribe connection.
#[derive(Debug, Clone)]
pub struct Rx {
    /// When it arrived.
    pub at: Instant,
    /// The m-line it arrived on.
    pub mid: Mid,
    /// The m-line's kind, as negotiated.
    pub mid_kind: MediaKind,
    /// The MediaStream id the engine gave the m-line (`a=msid`).
    pub stream_id: String,
    /// The sending client's `idx`, as the frame says.
    pub origin: u8,
    /// The kind the frame says it is.
    pub kind: Kind,
    /// The frame's number in its sender's sequence of that kind.
    pub counter: u32,
    /// The VP8 payload header says keyframe (P=0); always true for audio.
    pub keyframe: bool,
    /// str0m's own view (`MediaData::is_keyframe`).
    pub str0m_keyframe: bool,
}

/// A datagram in flight.
#[derive(Debug, Clone)]
pub struct Datagram {
    /// When it is delivered.
    pub at: Instant,
    /// The sender's address.
    pub from: SocketAddr,
    /// The receiver's address.
    pub to: SocketAddr,
    /// The datagram's bytes.
    pub data: Vec<u8>,
}

/// A browser-like device: a publish `Rtc` (it offers) and a subscribe `Rtc` (it answers the
/// engine's offers, str0m answers `a=setup:passive` to `actpass`). Both are non-lite.
pub struct Client {
    /// A label for messages.
    pub name: String,
    /// Its number: the origin byte of its frames and part of its addresses.
    pub idx: u8,
    /// Its participant (random).
    pub participant: ParticipantId,
    /// Its device in the engine.
    pub device: DeviceId,
    /// What it may publish (the harness tells the engine).
    pub permissions: MediaKinds,
    /// The publish connection (it offers).
    pub publish: Rtc,
    /// The subscribe connection (it answers).
    pub subscribe: Rtc,
    /// The publish connection's address.
    pub pub_addr: SocketAddr,
    /// The subscribe connection's address.
    pub sub_addr: SocketAddr,
    /// When the publish connection needs attention next.
    pub pub_timeout: Instant,
    /// When the subscribe connection needs attention next.
    pub sub_timeout: Instant,
    /// The publish connection is up.
    pub pub_connected: bool,
    /// The subscribe connection is up.
    pub sub_connected: bool,
    /// The MediaStream id of its published tracks.
    pub msid: String,
    /// The published audio m-line, once offered.
    pub audio_mid: Option<Mid>,
    /// RFC 4733 payloads to send on the audio m-line at the next audio frames.
    pub dtmf: VecDeque<Vec<u8>>,
    /// The published video m-line, once offered.
    pub video_mid: Option<Mid>,
    /// Publishing synthetic media when connected.
    pub sending: bool,
    /// When the next audio frame is due.
    pub next_audio: Instant,
    /// When the next video frame is due.
    pub next_video: Instant,
    /// Audio frames sent so far (the next one's number).
    pub audio_sent: u32,
    /// Video frames sent so far (the next one's number).
    pub video_sent: u32,
    /// Video frames written successfully.
    pub video_written: u32,
    /// The next video frame is a keyframe (first frame, or one was requested).
    pub force_keyframe: bool,
    /// Keyframe requests seen on the publish connection: (when, mid, kind).
    pub keyframe_requests: Vec<(Instant, Mid, KeyframeRequestKind)>,
    /// The size of each video frame written; 0 (the default) or less than the test frame's
    /// 300 bytes: the test frame (24 kbit/s at 10 frames a second). Larger frames are padded,
    /// up to what the last REMB the publish connection heard allows (as a browser's encoder
    /// follows it).
    pub video_frame_bytes: usize,
    /// REMBs the publish connection received: when, for which m-line, bits per second.
    pub rembs: Vec<(Instant, Mid, u64)>,
    /// Every subscribe offer the engine sent this device, in order.
    pub offers: Vec<(Instant, SubscribeOffer)>,
    /// The offer waiting for this device's answer.
    pub outstanding: Option<SubscribeOffer>,
    /// Answer subscribe offers as soon as they arrive.
    pub auto_answer: bool,
    /// The subscribe connection's built-in data channels exist.
    pub sub_channels_made: bool,
    /// The synthetic frames received, in order.
    pub received: Vec<Rx>,
    /// Non-synthetic or undecodable media on the subscribe side.
    pub foreign: usize,
    /// `MediaChanged` events on the subscribe connection.
    pub sub_media_changed: Vec<(Mid, Direction)>,
    /// Data channels opened: (on the subscribe connection, label).
    pub channels_open: Vec<(bool, String)>,
    /// Errors of its `Rtc`s, as messages.
    pub errors: Vec<String>,
    /// The engine's last answer to its publish offers.
    pub last_answer: Option<PublishAnswer>,
    /// One-way delay of this client's datagrams (copied from `Net::latency`).
    pub latency: Duration,
}

impl Client {
    /// Client number `idx` as `device`; `permissions` are what the harness tells the engine it
    /// may publish.
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
        let mut publish = rtc::browser_rtc(now);
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
            rembs: Vec::new(),
            video_frame_bytes: 0,
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
        let (next, error) = rtc::drain(
            rtc,
            now,
            |t| {
                enqueue(
                    queue,
                    Datagram {
                        at: now + latency,
                        from: t.source,
                        to: t.destination,
                        data: t.contents.to_vec(),
                    },
                )
            },
            &mut events,
        );
        if subscribe {
            self.sub_timeout = next;
        } else {
            self.pub_timeout = next;
        }
        if let Some(e) = error {
            self.errors
                .push(format!("{} {}: {e}", self.name, side(subscribe)));
        }
        for e in events {
            self.on_event(subscribe, e, now);
        }
    }

    /// Records what one event of a connection (`subscribe` or publish) says.
    pub fn on_event(&mut self, subscribe: bool, event: Event, now: Instant) {
        match event {
            Event::Connected if subscribe => self.sub_connected = true,
            Event::Connected => self.pub_connected = true,
            Event::KeyframeRequest(req) if !subscribe => {
                self.keyframe_requests.push((now, req.mid, req.kind));
                self.force_keyframe = true;
            }
            Event::EgressBitrateEstimate(BweKind::Remb { mid, estimate }) if !subscribe => {
                self.rembs.push((now, mid, estimate.as_u64()))
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

    /// Hands a datagram addressed to this client to the connection it is for.
    pub fn feed(&mut self, dgram: &Datagram, now: Instant, queue: &mut VecDeque<Datagram>) {
        let subscribe = dgram.to == self.sub_addr;
        let rtc = if subscribe {
            &mut self.subscribe
        } else {
            &mut self.publish
        };
        match rtc::receive(rtc, dgram.from, dgram.to, &dgram.data, now) {
            Ok(()) => {}
            Err(rtc::ReceiveError::Unparsable) => {
                self.errors
                    .push(format!("{}: unparsable datagram", self.name));
                return;
            }
            Err(rtc::ReceiveError::Input(e)) => {
                self.errors
                    .push(format!("{} {} input: {e}", self.name, side(subscribe)))
            }
        }
        self.drain(subscribe, now, queue);
    }

    /// Handles the timeouts of both connections that are due at `now`.
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
                let mut data = frame(self.idx, Kind::Video, n, key);
                // Like a browser's encoder, the frames follow the last REMB heard.
                let ceiling = self.rembs.last().map_or(usize::MAX, |(_, _, bps)| {
                    (*bps / 8 * VIDEO_EVERY.as_millis() as u64 / 1000) as usize
                });
                let size = self.video_frame_bytes.min(ceiling);
                if size > data.len() {
                    data.resize(size, 0x5A);
                }
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
    /// and the MediaStreams it declares (none).
    pub fn data_channel_offer(
        &mut self,
        now: Instant,
    ) -> (String, SdpPendingOffer, DeclaredStreams) {
        self.publish.handle_input(Input::Timeout(now)).unwrap();
        let mut api = self.publish.sdp_api();
        api.add_channel_with_config(rtc::builtin_channel(0, "__heartbeat__"));
        api.add_channel_with_config(rtc::builtin_channel(1, "__diagnostics__"));
        let (offer, pending) = api.apply().expect("a data channel offer");
        (offer.to_sdp_string(), pending, DeclaredStreams::new())
    }

    /// The SDK's second publish offer: sendonly tracks of one MediaStream, declared with
    /// `alias`.
    pub fn media_offer(
        &mut self,
        audio: bool,
        video: bool,
        alias: Option<&str>,
    ) -> (String, SdpPendingOffer, DeclaredStreams) {
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
        (offer.to_sdp_string(), pending, declared(msid, alias))
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
                    .create_data_channel(rtc::builtin_channel(id, label));
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

/// One declared MediaStream `msid` with `alias`, as the signalling layer hands it to the engine.
pub fn declared(msid: String, alias: Option<&str>) -> DeclaredStreams {
    let alias = alias.map(|a| StreamAlias::parse(a).expect("a valid test alias"));
    DeclaredStreams::from([(msid, alias)])
}

/// The virtual clock's next reading: `next` (the earliest thing due), but always forward (a
/// timer already due is served at the next tick) and never past `limit`.
pub fn advance(now: Instant, next: Instant, limit: Instant) -> Instant {
    next.max(now + Duration::from_micros(200))
        .min(limit.max(now))
}
