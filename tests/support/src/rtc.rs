//! The str0m mechanics every browser-like device shares, whatever carries its datagrams and
//! its signalling: running an `Rtc` until it waits, feeding it a datagram, writing a frame in a
//! negotiated codec, and the built-in data channels Bandwidth's SDK opens.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::channel::ChannelConfig;
use str0m::format::{Codec, FormatParams};
use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, Input, Output, Rtc, RtcError};

/// How long an `Rtc` that failed is left alone (it is dead; this keeps it out of the way).
const PARKED: Duration = Duration::from_secs(3600);

/// The name of a device's connection in messages.
pub fn side(subscribe: bool) -> &'static str {
    if subscribe {
        "subscribe"
    } else {
        "publish"
    }
}

/// Polls `rtc` until it asks to wait: each datagram goes to `transmit`, each event is appended
/// to `events`. Returns when to poll it next and, if polling failed, the error (the `Rtc` is
/// then parked for an hour).
pub fn drain(
    rtc: &mut Rtc,
    now: Instant,
    mut transmit: impl FnMut(Transmit),
    events: &mut Vec<Event>,
) -> (Instant, Option<RtcError>) {
    loop {
        match rtc.poll_output() {
            Ok(Output::Timeout(t)) => return (t, None),
            Ok(Output::Transmit(t)) => transmit(t),
            Ok(Output::Event(e)) => events.push(e),
            Err(e) => return (now + PARKED, Some(e)),
        }
    }
}

/// Why a datagram did not go into an `Rtc`.
#[derive(Debug)]
pub enum ReceiveError {
    /// Not something str0m can parse (not STUN, DTLS, RTP or RTCP).
    Unparsable,
    /// The `Rtc` refused it.
    Input(RtcError),
}

/// An `Rtc` set up like a browser: str0m's codecs plus telephone-event (RFC 4733) at 48 kHz,
/// as Chromium offers it next to Opus for DTMF.
pub fn browser_rtc(now: Instant) -> Rtc {
    let mut builder = Rtc::builder();
    builder.codec_config().add_config(
        110.into(),
        None,
        Codec::Tele,
        Frequency::FORTY_EIGHT_KHZ,
        None,
        FormatParams::parse_line("0-16"),
    );
    builder.build(now)
}

/// Hands a UDP datagram from `from` to `to` to `rtc` (the caller drains it afterwards).
pub fn receive(
    rtc: &mut Rtc,
    from: SocketAddr,
    to: SocketAddr,
    data: &[u8],
    now: Instant,
) -> Result<(), ReceiveError> {
    let receive =
        Receive::new(Protocol::Udp, from, to, data).map_err(|_| ReceiveError::Unparsable)?;
    rtc.handle_input(Input::Receive(now, receive))
        .map_err(ReceiveError::Input)
}

/// The payload type the m-line `mid` negotiated for `codec`.
pub fn payload_type(rtc: &mut Rtc, mid: Mid, codec: Codec) -> Option<Pt> {
    rtc.writer(mid)?
        .payload_params()
        .find(|p| p.spec().codec == codec)
        .map(|p| p.pt())
}

/// Writes one frame on `mid` in `codec`; false if the m-line or the codec is not there or
/// the write failed.
pub fn write_frame(
    rtc: &mut Rtc,
    mid: Mid,
    codec: Codec,
    time: MediaTime,
    data: Vec<u8>,
    now: Instant,
) -> bool {
    let Some(pt) = payload_type(rtc, mid, codec) else {
        return false;
    };
    let Some(writer) = rtc.writer(mid) else {
        return false;
    };
    writer.write(pt, now, time, data).is_ok()
}

/// One of the SDK's pre-negotiated data channels (`__heartbeat__` on 0, `__diagnostics__`
/// on 1).
pub fn builtin_channel(id: u16, label: &str) -> ChannelConfig {
    ChannelConfig {
        label: label.to_owned(),
        negotiated: Some(id),
        protocol: "udp".to_owned(),
        ..Default::default()
    }
}
