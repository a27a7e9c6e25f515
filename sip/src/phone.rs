//! One phone call's audio, both directions, driven entirely by the caller.
//!
//! This module owns the pipeline between one phone's RTP leg (G.711 plus RFC 4733 events) and
//! the SFU's Opus streams; the caller owns the socket, the clock and the SFU:
//!
//! ```text
//! phone → SFU:  receive_rtp ─▶ jitter buffer ─▶ G.711 decode ─▶ 8 kHz PCM ─▶ Opus encode
//!               (poll_uplink every 20 ms)                           └▶ UplinkFrame, 48 kHz clock
//!               RFC 4733 events ─▶ poll_dtmf (digits, de-duplicated)
//! SFU → phone:  push_downlink(source) ─▶ Opus decode to 8 kHz ─▶ mixer queue per source
//!               tick every ptime ─▶ mix ─▶ G.711 encode ─▶ RTP (or RFC 4733 event packets)
//! ```
//!
//! Timing and policy:
//! - **Uplink cadence**: the clock starts with the first audio packet's `now`. Each 20 ms step
//!   that `now` has passed yields one step; [`UplinkFrame::rtp_time_48k`] advances by 960 per
//!   step whether or not a frame is emitted, so receivers see real time. A caller more than
//!   200 ms behind skips the missed steps instead of bursting them.
//! - **Uplink gaps**: a lost packet (later ones buffered) is concealed by repeating the last
//!   packet at half the level each time, silence after three. An empty jitter buffer while
//!   talking is an underrun: up to 5 frames (100 ms) are concealed, then emission stops until
//!   the phone sends again (after pre-buffering). Comfort-noise (PT 13) and telephone-event
//!   packets hold their sequence slots and play as silence, so they do not look like loss.
//! - **Jitter buffer**: delay `max(2, 60 / ptime)` packets, latency capped at twice that
//!   (see [`crate::jitter`]).
//! - **Phone DTMF**: a digit is reported when its first end packet arrives, or when a new
//!   event or later audio shows that an event whose end packets were lost is over; the event
//!   timestamp de-duplicates the three end copies. Its duration is the longest its packets
//!   announced ([`PhoneMedia::poll_digit`]). At most 64 digits wait in
//!   [`PhoneMedia::poll_dtmf`]'s queue.
//! - **Downlink decode**: each Opus frame is decoded on push; a timestamp gap of one or two
//!   frames is filled first (one frame from the packet's in-band FEC, otherwise Opus PLC); a
//!   larger gap is a talk-spurt boundary (DTX) and is not filled; a frame at or before the
//!   last one decoded is dropped as late. The mixer ([`crate::mixer`], default policy) then
//!   pre-buffers, conceals underruns once with Opus PLC and trims backlog.
//! - **Downlink packets**: one RTP packet per [`PhoneMedia::tick`], `ptime` of audio;
//!   sequence and timestamp are continuous, starting from values derived from the SSRC (the
//!   caller picks a random SSRC, so they are unpredictable as RFC 3550 wants). If `now` shows
//!   that ticks were missed (3 ptimes or more), the timestamp jumps by the missed time and the
//!   next packet carries the marker bit.
//! - **DTMF to the phone**: with a negotiated telephone-event type each digit is an RFC 4733
//!   event that *replaces* audio: one packet per tick (duration growing by ptime), then three
//!   end packets on the next three ticks, all with the event's start timestamp; 40 ms of audio
//!   separates digits. Without one, the digit is played in band as a Q.23 dual tone replacing
//!   the mix. Durations are clamped to 40–6000 ms; at most 64 digits are queued.
//! - **Browser DTMF**: [`PhoneMedia::push_downlink_event`] turns a subscribed stream's RFC 4733
//!   events into digits for the phone: one digit per event, at its first end packet, with the
//!   event's duration; the other end copies share its timestamp and are dropped.
//! - **Hold tone**: with [`PhoneMedia::set_hold_tone`] (the caller sets it while the call is
//!   in no session) a sine of that frequency replaces the mix whenever no source is mixed.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::g711::G711Law;
use crate::jitter::{JitterBuffer, JitterConfig, Playout, PushOutcome};
use crate::mixer::{Frame, Mixer, MixerConfig, SourceId, FRAME_SAMPLES};
use crate::opus::{OpusDecoder, OpusEncoder, OpusError, FRAME_SAMPLES_8K};
use crate::rtp::{
    digit_event, telephone_event_sequence, RtpError, RtpPacket, TelephoneEvent, RTP_HEADER_LEN,
};
use crate::sdp::{Negotiated, SUPPORTED_PTIMES};

/// Sample rate of the phone leg.
const PHONE_RATE: u32 = 8000;
/// 48 kHz RTP ticks per 20 ms uplink frame.
pub const UPLINK_FRAME_TICKS_48K: u32 = 960;
/// Uplink frame duration.
const UPLINK_STEP: Duration = Duration::from_millis(20);
/// A caller further behind than this skips uplink steps instead of bursting them.
const MAX_UPLINK_CATCHUP: Duration = Duration::from_millis(200);
/// Frames concealed on an uplink underrun before emission stops.
const MAX_UPLINK_CONCEAL: u32 = 5;
/// Lost packets concealed by attenuated repetition before silence.
const MAX_REPEAT_CONCEAL: u32 = 3;
/// Largest G.711 payload accepted: 120 ms.
const MAX_G711_PAYLOAD: usize = 960;
/// Comfort noise, RFC 3389.
const COMFORT_NOISE_PT: u8 = 13;
/// Digits waiting in either direction.
const MAX_QUEUED_DIGITS: usize = 64;
/// Audio between two outgoing DTMF digits.
const DTMF_GAP_MS: u32 = 40;
/// Outgoing DTMF duration bounds.
const DTMF_MIN_MS: u32 = 40;
const DTMF_MAX_MS: u32 = 6000;
/// Power level written in outgoing RFC 4733 events (-dBm0).
const DTMF_VOLUME: u8 = 10;
/// Peak of each component of an in-band DTMF tone (about -10 dBm0).
const INBAND_DTMF_AMPLITUDE: i16 = 7000;
/// Peak of the hold tone (about -16 dBm0).
const HOLD_TONE_AMPLITUDE: i16 = 3000;
/// Largest downlink gap (in frames) filled with FEC/PLC; larger gaps are DTX.
const MAX_DOWNLINK_FILL: u32 = 2;

/// How a phone call's media was negotiated (normally from [`crate::sdp::Negotiated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneConfig {
    /// G.711 law.
    pub codec: G711Law,
    /// Payload type of the audio.
    pub payload_type: u8,
    /// Payload type of `telephone-event/8000`, if negotiated.
    pub dtmf_pt: Option<u8>,
    /// Packetisation interval, one of 10, 20, 30, 40 ms.
    pub ptime_ms: u32,
    /// Our SSRC towards the phone.
    pub ssrc: u32,
}

impl PhoneConfig {
    /// The configuration an SDP negotiation agreed on, with our SSRC (pick it at random).
    pub fn from_negotiated(negotiated: &Negotiated, ssrc: u32) -> Self {
        PhoneConfig {
            codec: negotiated.codec,
            payload_type: negotiated.payload_type,
            dtmf_pt: negotiated.dtmf_pt,
            ptime_ms: negotiated.ptime_ms,
            ssrc,
        }
    }
}

/// Why a [`PhoneMedia`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MediaError {
    /// The configuration cannot work.
    #[error("invalid phone media configuration: {0}")]
    InvalidConfig(&'static str),
    /// libopus failed to create a codec.
    #[error(transparent)]
    Opus(#[from] OpusError),
}

/// One Opus frame for the SFU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkFrame {
    /// RTP timestamp on WebRTC's 48 kHz Opus clock (+960 per 20 ms).
    pub rtp_time_48k: u32,
    /// The Opus packet (20 ms, encoded from 8 kHz mono).
    pub opus: Vec<u8>,
    /// The frame's audio level as RFC 6464 gives it: -dBov of its RMS, 0 (loudest) to 127
    /// (silence); see [`audio_level`].
    pub level: u8,
}

/// The RFC 6464 audio level of 16-bit PCM: the RMS in dB below a full-scale square wave
/// (dBov), as a positive number from 0 (full scale) to 127 (digital silence, or quieter).
pub fn audio_level(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let energy: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / pcm.len() as f64).sqrt();
    if rms < 1.0 {
        return 127;
    }
    let dbov = -20.0 * (rms / 32_768.0).log10();
    dbov.round().clamp(0.0, 127.0) as u8
}

/// Counters since the call started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhoneStats {
    /// RTP packets from the phone that were parsed and used (audio, events, comfort noise).
    pub rtp_received: u64,
    /// Datagrams from the phone refused by [`PhoneMedia::receive_rtp`].
    pub rtp_rejected: u64,
    /// Phone packets dropped as late by the jitter buffer.
    pub late_packets: u64,
    /// Phone packets dropped as duplicates.
    pub duplicate_packets: u64,
    /// Phone packets found missing at playout (concealed).
    pub lost_packets: u64,
    /// Jitter buffer resets (SSRC change, sequence restart).
    pub jitter_resets: u64,
    /// Uplink steps where the jitter buffer ran dry while the phone was talking.
    pub uplink_underruns: u64,
    /// G.711 packets decoded.
    pub g711_packets_decoded: u64,
    /// Opus frames produced for the SFU.
    pub uplink_frames_encoded: u64,
    /// Opus frames from the SFU decoded.
    pub downlink_frames_decoded: u64,
    /// Downlink frames filled by FEC or PLC (gaps and mixer underruns).
    pub downlink_concealed: u64,
    /// Opus frames from the SFU that failed to decode.
    pub downlink_decode_errors: u64,
    /// Opus frames from the SFU dropped as late or duplicate.
    pub downlink_late: u64,
    /// Mixer underruns over all sources.
    pub mixer_underruns: u64,
    /// Samples dropped by the mixer to bound latency.
    pub mixer_trimmed_samples: u64,
    /// Frames refused because too many sources were present.
    pub downlink_refused: u64,
    /// RTP packets produced for the phone.
    pub rtp_sent: u64,
    /// Audio payload bytes from the phone (G.711), in the packets taken.
    pub audio_bytes_received: u64,
    /// Payload bytes of the RTP packets produced for the phone.
    pub bytes_sent: u64,
    /// The interarrival jitter of the phone's audio (RFC 3550, 6.4.1), microseconds.
    pub interarrival_jitter_us: u64,
    /// Digits received from the phone.
    pub dtmf_received: u64,
    /// Digits sent to the phone (RFC 4733 or in band).
    pub dtmf_sent: u64,
    /// `send_dtmf` calls refused (not a DTMF digit, or the queue full).
    pub dtmf_rejected: u64,
}

/// What one jitter-buffer slot carries.
#[derive(Debug, Clone)]
enum Inbound {
    Audio(Vec<u8>),
    /// Telephone-event or comfort-noise packet: occupies its slot, plays as silence.
    Silence,
}

/// An RFC 4733 event from the phone, until it is reported.
#[derive(Debug, Clone, Copy)]
struct IncomingEvent {
    ssrc: u32,
    timestamp: u32,
    digit: char,
    /// The longest duration its packets announced (8 kHz samples).
    duration: u16,
}

/// A key pressed on the phone, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneDigit {
    /// `0`-`9`, `*`, `#` or `A`-`D`.
    pub digit: char,
    /// How long it was held, from the event's duration (0 if its end packets were lost and no
    /// packet announced one).
    pub duration_ms: u32,
}

/// A digit being sent to the phone.
#[derive(Debug)]
enum OutgoingDigit {
    Rfc4733 {
        packets: Vec<TelephoneEvent>,
        next: usize,
        timestamp: u32,
    },
    InBand {
        digit: char,
        played: u64,
        total: u64,
    },
}

struct DownlinkSource {
    decoder: OpusDecoder,
    /// 48 kHz timestamp expected for the next frame.
    next_rtp_time: Option<u32>,
}

/// One phone call's audio pipeline. See the module docs for the policies.
pub struct PhoneMedia {
    config: PhoneConfig,
    samples_per_packet: usize,

    // phone → SFU
    jitter: JitterBuffer<Inbound>,
    uplink_pcm: VecDeque<i16>,
    last_packet_pcm: Vec<i16>,
    repeat_run: u32,
    encoder: OpusEncoder,
    uplink_deadline: Option<Instant>,
    uplink_rtp_time: u32,
    uplink_talking: bool,
    uplink_conceal_run: u32,
    decode_scratch: Vec<i16>,
    /// The origin of arrival times in 8 kHz units, for the interarrival jitter.
    arrival_origin: Option<Instant>,
    /// The SSRC and relative transit time (arrival minus RTP timestamp, 8 kHz units, modulo
    /// 2^32) of the last audio packet.
    last_transit: Option<(u32, u32)>,
    /// The interarrival jitter estimate, 8 kHz units (RFC 3550, 6.4.1).
    jitter_units: f64,

    // phone DTMF
    current_event: Option<IncomingEvent>,
    last_reported: Option<(u32, u32)>,
    digits_in: VecDeque<PhoneDigit>,
    /// The last browser event queued for the phone: (source, event timestamp).
    last_forwarded_event: Option<(SourceId, u32)>,
    /// Played while the phone hears nobody and is in no session (0: silence).
    hold_tone_hz: u32,
    hold_tone_phase: u64,

    // SFU → phone
    sources: BTreeMap<SourceId, DownlinkSource>,
    mixer: Mixer,
    downlink_pcm: VecDeque<i16>,
    out_seq: u16,
    out_ts: u32,
    out_marker: bool,
    last_tick: Option<Instant>,
    digits_out: VecDeque<(char, u32)>,
    playing_digit: Option<OutgoingDigit>,
    digit_gap_ticks: u32,
    encode_scratch: Vec<u8>,

    stats: PhoneStats,
}

impl std::fmt::Debug for PhoneMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneMedia")
            .field("config", &self.config)
            .field("sources", &self.sources.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A 64-bit mix of the SSRC (splitmix64 finaliser) for initial sequence and timestamps.
fn scramble(ssrc: u32) -> u64 {
    let mut z = u64::from(ssrc).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl PhoneMedia {
    /// Builds the pipeline; fails on an impossible configuration or if libopus cannot
    /// create its codecs.
    pub fn new(config: PhoneConfig) -> Result<Self, MediaError> {
        if !SUPPORTED_PTIMES.contains(&config.ptime_ms) {
            return Err(MediaError::InvalidConfig(
                "ptime must be 10, 20, 30 or 40 ms",
            ));
        }
        if config.payload_type > 127 || (72..=76).contains(&config.payload_type) {
            return Err(MediaError::InvalidConfig(
                "audio payload type must be 0..=127 and not an RTCP type",
            ));
        }
        if let Some(pt) = config.dtmf_pt {
            if pt > 127 || (72..=76).contains(&pt) || pt == config.payload_type {
                return Err(MediaError::InvalidConfig(
                    "telephone-event payload type must be 0..=127, not RTCP, not the audio type",
                ));
            }
        }
        let samples_per_packet = (config.ptime_ms * PHONE_RATE / 1000) as usize;
        let delay = (60 / config.ptime_ms as usize).max(2);
        let jitter = JitterBuffer::new(JitterConfig {
            playout_delay: delay,
            max_latency: delay * 2,
            ..JitterConfig::default()
        });
        let seed = scramble(config.ssrc);
        Ok(PhoneMedia {
            config,
            samples_per_packet,
            jitter,
            uplink_pcm: VecDeque::with_capacity(4 * FRAME_SAMPLES_8K),
            last_packet_pcm: Vec::new(),
            repeat_run: 0,
            encoder: OpusEncoder::new()?,
            uplink_deadline: None,
            uplink_rtp_time: (seed >> 32) as u32,
            uplink_talking: false,
            uplink_conceal_run: 0,
            decode_scratch: Vec::with_capacity(MAX_G711_PAYLOAD),
            arrival_origin: None,
            last_transit: None,
            jitter_units: 0.0,
            current_event: None,
            last_reported: None,
            digits_in: VecDeque::new(),
            last_forwarded_event: None,
            hold_tone_hz: 0,
            hold_tone_phase: 0,
            sources: BTreeMap::new(),
            mixer: Mixer::new(MixerConfig::default()),
            downlink_pcm: VecDeque::with_capacity(2 * FRAME_SAMPLES),
            out_seq: (seed & 0x7FFF) as u16,
            out_ts: (seed >> 16) as u32,
            out_marker: true,
            last_tick: None,
            digits_out: VecDeque::new(),
            playing_digit: None,
            digit_gap_ticks: 0,
            encode_scratch: Vec::with_capacity(MAX_G711_PAYLOAD),
            stats: PhoneStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> PhoneConfig {
        self.config
    }

    /// When [`PhoneMedia::poll_uplink`] next has a step due (`None` before the phone's
    /// first audio packet).
    pub fn next_uplink_deadline(&self) -> Option<Instant> {
        self.uplink_deadline
    }

    /// Counters.
    pub fn stats(&self) -> PhoneStats {
        let jitter = self.jitter.stats();
        let mixer = self.mixer.stats();
        PhoneStats {
            late_packets: jitter.late,
            duplicate_packets: jitter.duplicates,
            lost_packets: jitter.lost,
            jitter_resets: jitter.resets,
            mixer_underruns: mixer.underruns,
            mixer_trimmed_samples: mixer.trimmed_samples,
            downlink_concealed: self.stats.downlink_concealed + mixer.concealed,
            interarrival_jitter_us: (self.jitter_units * 1_000_000.0 / f64::from(PHONE_RATE))
                as u64,
            ..self.stats
        }
    }

    // ---------------------------------------------------------------- phone → SFU

    /// Takes one datagram from the phone: G.711 audio, a telephone event or comfort noise.
    /// Late and duplicate packets are accepted and dropped silently (they are counted).
    pub fn receive_rtp(&mut self, packet: &[u8], now: Instant) -> Result<(), RtpError> {
        let result = self.receive_inner(packet, now);
        match result {
            Ok(()) => self.stats.rtp_received += 1,
            Err(_) => self.stats.rtp_rejected += 1,
        }
        result
    }

    fn receive_inner(&mut self, packet: &[u8], now: Instant) -> Result<(), RtpError> {
        let rtp = RtpPacket::parse(packet)?;
        let pt = rtp.payload_type;
        if (72..=76).contains(&pt) {
            return Err(RtpError::Rtcp(pt));
        }
        if pt == self.config.payload_type {
            let len = rtp.payload.len();
            if len == 0 || len > MAX_G711_PAYLOAD {
                return Err(RtpError::BadPayloadLength { len });
            }
            self.finish_event_before(rtp.ssrc, rtp.timestamp);
            self.stats.audio_bytes_received += len as u64;
            self.measure_jitter(rtp.ssrc, rtp.timestamp, now);
            let outcome =
                self.jitter
                    .push(rtp.ssrc, rtp.sequence, Inbound::Audio(rtp.payload.to_vec()));
            if matches!(outcome, PushOutcome::Accepted | PushOutcome::Reset)
                && self.uplink_deadline.is_none()
            {
                self.uplink_deadline = Some(now);
            }
            return Ok(());
        }
        if Some(pt) == self.config.dtmf_pt {
            let event = TelephoneEvent::parse(rtp.payload)?;
            self.on_event(rtp.ssrc, rtp.timestamp, event);
            self.jitter.push(rtp.ssrc, rtp.sequence, Inbound::Silence);
            return Ok(());
        }
        if pt == COMFORT_NOISE_PT {
            self.jitter.push(rtp.ssrc, rtp.sequence, Inbound::Silence);
            return Ok(());
        }
        Err(RtpError::UnexpectedPayloadType(pt))
    }

    /// Updates the interarrival jitter with an audio packet of `ssrc` stamped `timestamp`
    /// that arrived at `now` (RFC 3550, 6.4.1: J += (|D| - J) / 16, D the change of the
    /// relative transit time; all in 8 kHz units, wrapping like RTP timestamps). A new SSRC
    /// starts from its first packet.
    fn measure_jitter(&mut self, ssrc: u32, timestamp: u32, now: Instant) {
        let origin = *self.arrival_origin.get_or_insert(now);
        let arrival =
            now.saturating_duration_since(origin).as_micros() * u128::from(PHONE_RATE) / 1_000_000;
        let transit = (arrival as u32).wrapping_sub(timestamp);
        if let Some((last_ssrc, last)) = self.last_transit {
            if last_ssrc == ssrc {
                let d = f64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
                self.jitter_units += (d - self.jitter_units) / 16.0;
            }
        }
        self.last_transit = Some((ssrc, transit));
    }

    fn report_digit(&mut self, event: IncomingEvent) {
        if self.last_reported == Some((event.ssrc, event.timestamp)) {
            return;
        }
        self.last_reported = Some((event.ssrc, event.timestamp));
        if self.digits_in.len() >= MAX_QUEUED_DIGITS {
            self.digits_in.pop_front();
        }
        self.digits_in.push_back(PhoneDigit {
            digit: event.digit,
            duration_ms: u32::from(event.duration) * 1000 / PHONE_RATE,
        });
        self.stats.dtmf_received += 1;
    }

    /// Audio later than an unfinished event means the event is over (its end was lost).
    fn finish_event_before(&mut self, ssrc: u32, timestamp: u32) {
        if let Some(event) = self.current_event {
            let after = timestamp.wrapping_sub(event.timestamp) as i32 > 0;
            if event.ssrc != ssrc || after {
                self.current_event = None;
                self.report_digit(event);
            }
        }
    }

    fn on_event(&mut self, ssrc: u32, timestamp: u32, event: TelephoneEvent) {
        let Some(digit) = event.digit() else {
            return; // not DTMF (flash hook, tones, …)
        };
        let mut this = IncomingEvent {
            ssrc,
            timestamp,
            digit,
            duration: event.duration,
        };
        if let Some(current) = self.current_event {
            if current.ssrc == ssrc && current.timestamp == timestamp {
                this.duration = this.duration.max(current.duration);
            } else {
                // A new event began: the previous one is over even if its end was lost.
                self.current_event = None;
                self.report_digit(current);
            }
        }
        if event.end {
            self.current_event = None;
            self.report_digit(this);
        } else if self.last_reported != Some((ssrc, timestamp)) {
            self.current_event = Some(this);
        }
    }

    /// The next digit the phone sent, oldest first.
    pub fn poll_dtmf(&mut self) -> Option<char> {
        self.poll_digit().map(|d| d.digit)
    }

    /// The next digit the phone sent, oldest first, with how long it was held.
    pub fn poll_digit(&mut self) -> Option<PhoneDigit> {
        self.digits_in.pop_front()
    }

    /// The next Opus frame for the SFU, if a 20 ms step is due at `now` and there is audio
    /// for it. Call in a loop until `None` whenever [`PhoneMedia::next_uplink_deadline`]
    /// passes (or simply every 20 ms).
    pub fn poll_uplink(&mut self, now: Instant) -> Option<UplinkFrame> {
        loop {
            let deadline = self.uplink_deadline?;
            if now < deadline {
                return None;
            }
            let behind = now.duration_since(deadline);
            let mut deadline = deadline;
            if behind > MAX_UPLINK_CATCHUP {
                // Skip whole missed steps, keeping the 48 kHz clock honest (mod 2^32).
                let step_us = UPLINK_STEP.as_micros();
                let missed = behind.as_micros() / step_us;
                let skipped = u64::try_from(missed * step_us).unwrap_or(u64::MAX);
                deadline = deadline
                    .checked_add(Duration::from_micros(skipped))
                    .unwrap_or(now);
                self.uplink_rtp_time = self
                    .uplink_rtp_time
                    .wrapping_add((missed as u32).wrapping_mul(UPLINK_FRAME_TICKS_48K));
            }
            self.uplink_deadline = Some(deadline.checked_add(UPLINK_STEP).unwrap_or(now));
            let rtp_time_48k = self.uplink_rtp_time;
            self.uplink_rtp_time = self.uplink_rtp_time.wrapping_add(UPLINK_FRAME_TICKS_48K);
            if let Some((opus, level)) = self.uplink_step() {
                return Some(UplinkFrame {
                    rtp_time_48k,
                    opus,
                    level,
                });
            }
        }
    }

    /// Appends `n` samples of concealment for a missing packet.
    fn conceal_uplink(&mut self, n: usize) {
        self.repeat_run += 1;
        if self.repeat_run > MAX_REPEAT_CONCEAL || self.last_packet_pcm.is_empty() {
            self.uplink_pcm.extend(std::iter::repeat_n(0, n));
            return;
        }
        let shift = self.repeat_run; // 1..=3: half, quarter, eighth
        let source = &self.last_packet_pcm;
        self.uplink_pcm
            .extend(source.iter().cycle().take(n).map(|&s| s >> shift));
    }

    /// One 20 ms uplink step: fill 160 samples from the jitter buffer and encode them; the
    /// Opus packet and the samples' audio level.
    fn uplink_step(&mut self) -> Option<(Vec<u8>, u8)> {
        while self.uplink_pcm.len() < FRAME_SAMPLES_8K {
            match self.jitter.pop() {
                Playout::Packet(Inbound::Audio(bytes)) => {
                    self.decode_scratch.clear();
                    self.config.codec.decode(&bytes, &mut self.decode_scratch);
                    self.uplink_pcm.extend(self.decode_scratch.iter().copied());
                    std::mem::swap(&mut self.last_packet_pcm, &mut self.decode_scratch);
                    self.repeat_run = 0;
                    self.stats.g711_packets_decoded += 1;
                }
                Playout::Packet(Inbound::Silence) => {
                    self.uplink_pcm
                        .extend(std::iter::repeat_n(0, self.samples_per_packet));
                    self.last_packet_pcm.clear();
                    self.repeat_run = 0;
                }
                Playout::Lost => self.conceal_uplink(self.samples_per_packet),
                Playout::Empty => break,
            }
        }
        if self.uplink_pcm.len() < FRAME_SAMPLES_8K {
            if !self.uplink_talking || self.uplink_conceal_run >= MAX_UPLINK_CONCEAL {
                self.uplink_talking = false;
                return None;
            }
            self.uplink_conceal_run += 1;
            self.stats.uplink_underruns += 1;
            let missing = FRAME_SAMPLES_8K - self.uplink_pcm.len();
            self.conceal_uplink(missing);
        } else {
            self.uplink_talking = true;
            self.uplink_conceal_run = 0;
        }
        let mut frame = [0i16; FRAME_SAMPLES_8K];
        for (slot, sample) in frame
            .iter_mut()
            .zip(self.uplink_pcm.drain(..FRAME_SAMPLES_8K))
        {
            *slot = sample;
        }
        match self.encoder.encode(&frame) {
            Ok(opus) => {
                self.stats.uplink_frames_encoded += 1;
                Some((opus, audio_level(&frame)))
            }
            Err(err) => {
                tracing::warn!(%err, "opus encode failed");
                None
            }
        }
    }

    // ---------------------------------------------------------------- SFU → phone

    /// Takes one Opus frame of a subscribed stream, stamped with its 48 kHz RTP timestamp.
    /// Undecodable frames are counted and dropped.
    pub fn push_downlink(&mut self, source: SourceId, opus: &[u8], rtp_time_48k: u32) {
        if !self.sources.contains_key(&source) {
            if !self.mixer.add(source) {
                self.stats.downlink_refused += 1;
                return;
            }
            match OpusDecoder::new() {
                Ok(decoder) => {
                    self.sources.insert(
                        source,
                        DownlinkSource {
                            decoder,
                            next_rtp_time: None,
                        },
                    );
                }
                Err(err) => {
                    tracing::warn!(%err, "opus decoder creation failed");
                    self.mixer.remove(source);
                    self.stats.downlink_decode_errors += 1;
                    return;
                }
            }
        }
        let Some(entry) = self.sources.get_mut(&source) else {
            return;
        };
        if let Some(expected) = entry.next_rtp_time {
            let diff = rtp_time_48k.wrapping_sub(expected) as i32;
            // Within ten seconds back: late or duplicate. Further back: a restarted stream.
            if diff < 0 && diff > -480_000 {
                self.stats.downlink_late += 1;
                return;
            }
            if diff > 0 {
                let missing = diff as u32 / UPLINK_FRAME_TICKS_48K;
                if (1..=MAX_DOWNLINK_FILL).contains(&missing) {
                    for i in 0..missing {
                        let filled = if i + 1 == missing {
                            entry.decoder.decode_fec(opus)
                        } else {
                            entry.decoder.decode(None)
                        };
                        if let Ok(pcm) = filled {
                            self.mixer.push(source, pcm);
                            self.stats.downlink_concealed += 1;
                        }
                    }
                }
            }
        }
        match entry.decoder.decode(Some(opus)) {
            Ok(pcm) => {
                // 8 kHz samples to 48 kHz ticks.
                let ticks = (pcm.len() as u32).saturating_mul(6);
                entry.next_rtp_time = Some(rtp_time_48k.wrapping_add(ticks));
                self.mixer.push(source, pcm);
                self.stats.downlink_frames_decoded += 1;
            }
            Err(err) => {
                tracing::debug!(%err, source = source.0, "undecodable opus frame");
                self.stats.downlink_decode_errors += 1;
            }
        }
    }

    /// Stops mixing `source` and frees its decoder.
    pub fn remove_source(&mut self, source: SourceId) {
        self.sources.remove(&source);
        self.mixer.remove(source);
    }

    /// Takes one RFC 4733 telephone-event payload of a subscribed stream (a browser's DTMF),
    /// stamped with its RTP timestamp on a `clock_rate` clock. One digit is queued for the
    /// phone per event, at its first end packet, with the event's duration: the repeated end
    /// packets (RFC 4733 sends three) share the event's timestamp and are dropped. Returns
    /// whether a digit was queued.
    pub fn push_downlink_event(
        &mut self,
        source: SourceId,
        payload: &[u8],
        rtp_time: u32,
        clock_rate: u32,
    ) -> bool {
        let Ok(event) = TelephoneEvent::parse(payload) else {
            return false;
        };
        let Some(digit) = event.digit() else {
            return false;
        };
        if !event.end || self.last_forwarded_event == Some((source, rtp_time)) {
            return false;
        }
        self.last_forwarded_event = Some((source, rtp_time));
        let duration_ms = u64::from(event.duration) * 1000 / u64::from(clock_rate.max(1));
        self.send_dtmf(digit, u32::try_from(duration_ms).unwrap_or(DTMF_MAX_MS));
        true
    }

    /// Plays a tone of `hz` to the phone while it hears no source (0: silence), for a call
    /// in no session.
    pub fn set_hold_tone(&mut self, hz: u32) {
        if hz != self.hold_tone_hz {
            self.hold_tone_hz = hz;
            self.hold_tone_phase = 0;
        }
    }

    /// Queues a digit to play to the phone (RFC 4733 if negotiated, in band otherwise).
    /// Non-DTMF characters, and digits beyond 64 waiting, are refused (counted).
    pub fn send_dtmf(&mut self, digit: char, duration_ms: u32) {
        if digit_event(digit).is_none() || self.digits_out.len() >= MAX_QUEUED_DIGITS {
            self.stats.dtmf_rejected += 1;
            return;
        }
        let duration = duration_ms.clamp(DTMF_MIN_MS, DTMF_MAX_MS);
        self.digits_out
            .push_back((digit.to_ascii_uppercase(), duration));
    }

    /// Produces what to send to the phone for one packet interval; call every `ptime`.
    pub fn tick(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let spp = self.samples_per_packet;
        let ptime = Duration::from_millis(u64::from(self.config.ptime_ms));
        if let Some(last) = self.last_tick {
            let elapsed = now.saturating_duration_since(last);
            if elapsed >= ptime * 3 {
                let missed = (elapsed.as_micros() / ptime.as_micros()).saturating_sub(1);
                let missed = u32::try_from(missed).unwrap_or(u32::MAX);
                self.out_ts = self.out_ts.wrapping_add(missed.wrapping_mul(spp as u32));
                self.out_marker = true;
            }
        }
        self.last_tick = Some(now);

        // Mix enough 20 ms frames for one packet.
        while self.downlink_pcm.len() < spp {
            let sources = &mut self.sources;
            // Opus PLC for a source that ran dry (the mixer asks once per underrun).
            let frame = self.mixer.tick_with(|id| {
                let pcm = sources.get_mut(&id)?.decoder.decode(None).ok()?;
                let mut frame: Frame = [0; FRAME_SAMPLES];
                for (slot, s) in frame.iter_mut().zip(pcm) {
                    *slot = *s;
                }
                Some(frame)
            });
            self.downlink_pcm.extend(frame);
        }
        let mut audio: Vec<i16> = self.downlink_pcm.drain(..spp).collect();
        if self.hold_tone_hz > 0 && self.sources.is_empty() {
            let tone = crate::tone::sine_from(
                f64::from(self.hold_tone_hz),
                PHONE_RATE,
                self.hold_tone_phase,
                spp,
                HOLD_TONE_AMPLITUDE,
            );
            self.hold_tone_phase += spp as u64;
            for (slot, s) in audio.iter_mut().zip(tone) {
                *slot = s;
            }
        }

        if self.playing_digit.is_none() {
            if self.digit_gap_ticks > 0 {
                self.digit_gap_ticks -= 1;
            } else if let Some((digit, duration_ms)) = self.digits_out.pop_front() {
                self.start_digit(digit, duration_ms);
            }
        }

        let mut out = Vec::with_capacity(1);
        let timestamp = self.out_ts;
        match self.playing_digit.as_mut() {
            Some(OutgoingDigit::Rfc4733 {
                packets,
                next,
                timestamp: event_ts,
            }) => {
                let first = *next == 0;
                let payload = packets.get(*next).map(|e| e.to_bytes());
                *next += 1;
                let done = *next >= packets.len();
                let event_ts = *event_ts;
                if let (Some(payload), Some(pt)) = (payload, self.config.dtmf_pt) {
                    let packet = RtpPacket::new(
                        pt,
                        self.out_seq,
                        event_ts,
                        self.config.ssrc,
                        first,
                        &payload,
                    );
                    out.push(packet.to_bytes());
                }
                if done {
                    self.finish_digit();
                }
            }
            Some(OutgoingDigit::InBand {
                digit,
                played,
                total,
            }) => {
                let n = (*total - *played).min(spp as u64) as usize;
                if let Some(tone) =
                    crate::tone::dtmf(*digit, PHONE_RATE, *played, n, INBAND_DTMF_AMPLITUDE)
                {
                    for (slot, s) in audio.iter_mut().zip(tone) {
                        *slot = s;
                    }
                }
                *played += n as u64;
                if *played >= *total {
                    self.finish_digit();
                }
            }
            None => {}
        }
        if out.is_empty() {
            self.encode_scratch.clear();
            self.config.codec.encode(&audio, &mut self.encode_scratch);
            let packet = RtpPacket::new(
                self.config.payload_type,
                self.out_seq,
                timestamp,
                self.config.ssrc,
                self.out_marker,
                &self.encode_scratch,
            );
            out.push(packet.to_bytes());
            self.out_marker = false;
        }
        self.out_seq = self.out_seq.wrapping_add(1);
        self.out_ts = self.out_ts.wrapping_add(spp as u32);
        self.stats.rtp_sent += out.len() as u64;
        self.stats.bytes_sent += out
            .iter()
            .map(|p| p.len().saturating_sub(RTP_HEADER_LEN) as u64)
            .sum::<u64>();
        out
    }

    fn start_digit(&mut self, digit: char, duration_ms: u32) {
        let samples = duration_ms * PHONE_RATE / 1000;
        self.stats.dtmf_sent += 1;
        self.playing_digit = match (self.config.dtmf_pt, digit_event(digit)) {
            (Some(_), Some(event)) => Some(OutgoingDigit::Rfc4733 {
                packets: telephone_event_sequence(
                    event,
                    DTMF_VOLUME,
                    samples,
                    self.samples_per_packet as u32,
                ),
                next: 0,
                timestamp: self.out_ts,
            }),
            _ => Some(OutgoingDigit::InBand {
                digit,
                played: 0,
                total: u64::from(samples),
            }),
        };
    }

    fn finish_digit(&mut self) {
        self.playing_digit = None;
        self.digit_gap_ticks = DTMF_GAP_MS.div_ceil(self.config.ptime_ms);
        // Audio after an event starts a new talkspurt.
        self.out_marker = true;
    }
}

#[cfg(test)]
mod level_tests {
    use super::audio_level;

    fn sine(amplitude: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amplitude * (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn levels_are_dbov_of_the_rms() {
        assert_eq!(audio_level(&[]), 127);
        assert_eq!(audio_level(&[0; 160]), 127);
        assert_eq!(audio_level(&[i16::MAX; 160]), 0);
        // A full-scale sine is 3 dB below a full-scale square wave.
        assert_eq!(audio_level(&sine(32_767.0, 160)), 3);
        // A tone 20 dB below that: 23.
        assert_eq!(audio_level(&sine(3_276.7, 160)), 23);
        // Quieter than 127 dB below full scale is silence too.
        assert_eq!(audio_level(&[1, -1, 0, 0]), 127);
    }
}
