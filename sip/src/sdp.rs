//! SDP offer/answer (RFC 3264 over RFC 4566) for a phone's plain-RTP audio leg.
//!
//! This module owns reading a phone's offer and writing our answer; [`answer`] is the whole
//! API and serves initial offers and re-offers alike (the caller bumps
//! [`AnswerParams::session_version`] for each new answer in a dialog).
//!
//! # What is accepted
//! - The first `m=audio` line with a non-zero port and the `RTP/AVP` profile. Every other
//!   m-line (video, a second audio stream, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, …) is rejected in
//!   the answer with port 0, in the offer's m-line order, as RFC 3264 §6 requires.
//! - Codec: the first of PCMU or PCMA *in the offerer's order of preference* (format list
//!   order). A format is recognised by its `a=rtpmap` (name case-insensitive, clock 8000,
//!   one channel) or, without one, by the static payload types 0 and 8.
//! - `telephone-event/8000` with whatever dynamic payload type the offer gave it; the answer
//!   advertises events `0-15` (DTMF).
//! - `a=ptime`: media level, else session level, else 20. 10, 20, 30 and 40 ms are kept
//!   (the phone pipeline re-frames); any other value is answered with 20. An `a=maxptime`
//!   below the chosen value lowers it to the largest supported value under it.
//! - Connection address: the m-line's `c=`, else the session's. `0.0.0.0` (or `::`) is the
//!   RFC 2543 hold: [`Negotiated::remote`] is `None` and we do not send.
//! - Direction: `a=sendrecv|sendonly|recvonly|inactive` at media level, else session level,
//!   else sendrecv; the answer mirrors it (offer `sendonly` → answer `recvonly`, and so on).
//!   With a hold address the answer also drops its own sending half.
//! - Ignored: `a=rtcp`, `a=rtcp-mux`, `b=`, `i=`, unknown attributes, malformed attributes
//!   (a broken `a=rtpmap` only loses that mapping).
//!
//! # What is refused
//! [`SdpError`] says exactly why; [`SdpError::sip_status`] maps it to 400 (unreadable) or
//! 488 Not Acceptable Here (readable, but nothing we can do).
//!
//! The parser is strict about structure (`v=0` first, `<type>=<value>` lines, well-formed
//! `m=` and `c=`), lenient about content it does not need, bounded (64 KiB, 64 m-lines), and
//! panics on no input: everything is `str` splitting with checked conversions.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::g711::G711Law;

/// Largest offer accepted, in bytes.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Largest number of m-lines accepted.
pub const MAX_MEDIA: usize = 64;
/// Packetisation intervals the phone pipeline supports (ms).
pub const SUPPORTED_PTIMES: [u32; 4] = [10, 20, 30, 40];

/// Our side of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerParams {
    /// Address the phone should send RTP to (and the `o=` address).
    pub ip: IpAddr,
    /// RTP port the phone should send to.
    pub port: u16,
    /// `o=` session id: fixed for the dialog.
    pub session_id: u64,
    /// `o=` session version: the caller increments it for every new answer in a dialog.
    pub session_version: u64,
}

/// A media direction (RFC 3264 §5.1), from the point of view of the side that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Send and receive.
    SendRecv,
    /// Send only.
    SendOnly,
    /// Receive only.
    RecvOnly,
    /// Neither.
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answerer uses for an offer with this direction.
    pub fn mirror(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether this side sends.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn without_send(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::RecvOnly => Direction::RecvOnly,
            Direction::SendOnly | Direction::Inactive => Direction::Inactive,
        }
    }

    fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// The outcome of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Where to send RTP; `None` when the phone holds the call with `c=0.0.0.0`.
    pub remote: Option<SocketAddr>,
    /// The chosen G.711 law.
    pub codec: G711Law,
    /// Its payload type in the offer (0/8 unless the offer mapped it dynamically).
    pub payload_type: u8,
    /// The offer's `telephone-event/8000` payload type, if it offered one.
    pub dtmf_pt: Option<u8>,
    /// Packetisation interval both ways, one of [`SUPPORTED_PTIMES`].
    pub ptime_ms: u32,
    /// Our direction, as written in the answer.
    pub direction: Direction,
    /// The answer, CRLF line endings.
    pub answer_sdp: String,
}

impl Negotiated {
    /// Whether the phone put the call on hold (it will not receive, or gave no address).
    pub fn on_hold(&self) -> bool {
        self.remote.is_none() || !self.direction.sends()
    }
}

/// Why an offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The offer exceeds [`MAX_SDP_LEN`].
    #[error("SDP of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Offer length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first line is not `v=0`.
    #[error("not an SDP session description (it must start with v=0)")]
    NotSdp,
    /// A line that breaks RFC 4566 structure.
    #[error("SDP syntax error on line {line}: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// More than [`MAX_MEDIA`] m-lines.
    #[error("SDP has {0} media descriptions, at most 64 are accepted")]
    TooManyMedia(usize),
    /// No active `m=audio` line at all.
    #[error("SDP offers no audio stream")]
    NoAudio,
    /// Audio is offered only over a profile other than plain RTP/AVP (SRTP, WebRTC, …).
    #[error("audio offered only over {0}, plain RTP/AVP is required")]
    UnsupportedProfile(String),
    /// An RTP/AVP audio stream exists but offers neither PCMU nor PCMA.
    #[error("no common codec: PCMU or PCMA at 8000 Hz is required")]
    NoCommonCodec,
    /// The chosen audio stream has no `c=` line, at media or session level.
    #[error("audio stream has no connection address")]
    MissingConnection,
    /// The connection address is not a unicast IP literal (FQDN, multicast, unknown type).
    #[error("unsupported connection address {0:?}")]
    UnsupportedAddress(String),
}

impl SdpError {
    /// The SIP status an INVITE/UPDATE carrying this offer should be answered with.
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::TooLarge { .. } | SdpError::NotSdp | SdpError::Syntax { .. } => 400,
            _ => 488,
        }
    }
}

/// A `c=` value as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Connection {
    Unicast(IpAddr),
    /// `0.0.0.0` / `::`: RFC 2543 hold.
    Hold,
    /// Anything we cannot send to (kept for the error message).
    Unsupported(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct RtpMap<'a> {
    pt: u8,
    name: &'a str,
    rate: u32,
    channels: Option<u32>,
}

#[derive(Debug, Default)]
struct Media<'a> {
    kind: &'a str,
    port: u16,
    proto: &'a str,
    formats: Vec<&'a str>,
    connection: Option<Connection>,
    rtpmaps: Vec<RtpMap<'a>>,
    ptime: Option<u32>,
    maxptime: Option<u32>,
    direction: Option<Direction>,
}

#[derive(Debug, Default)]
struct Offer<'a> {
    connection: Option<Connection>,
    ptime: Option<u32>,
    maxptime: Option<u32>,
    direction: Option<Direction>,
    media: Vec<Media<'a>>,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

fn parse_connection(value: &str, line: usize) -> Result<Connection, SdpError> {
    let mut parts = value.split_ascii_whitespace();
    let (Some(net), Some(addr_type), Some(addr)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SdpError::Syntax {
            line,
            reason: "c= needs <nettype> <addrtype> <address>",
        });
    };
    if !net.eq_ignore_ascii_case("IN")
        || !(addr_type.eq_ignore_ascii_case("IP4") || addr_type.eq_ignore_ascii_case("IP6"))
    {
        return Ok(Connection::Unsupported(value.to_string()));
    }
    // Multicast addresses carry /ttl and /count suffixes.
    let literal = addr.split('/').next().unwrap_or(addr);
    match literal.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Ok(Connection::Hold),
        Ok(ip) if ip.is_multicast() || addr.contains('/') => {
            Ok(Connection::Unsupported(addr.to_string()))
        }
        Ok(ip) => Ok(Connection::Unicast(ip)),
        Err(_) => Ok(Connection::Unsupported(addr.to_string())),
    }
}

fn parse_media_line(value: &str, line: usize) -> Result<Media<'_>, SdpError> {
    let syntax = |reason| SdpError::Syntax { line, reason };
    let mut parts = value.split_ascii_whitespace();
    let kind = parts.next().ok_or(syntax("m= is empty"))?;
    let port_field = parts.next().ok_or(syntax("m= has no port"))?;
    let proto = parts.next().ok_or(syntax("m= has no transport"))?;
    let formats: Vec<&str> = parts.collect();
    if formats.is_empty() {
        return Err(syntax("m= has no formats"));
    }
    if !is_token(kind) || !is_token(proto) || !formats.iter().all(|f| is_token(f)) {
        return Err(syntax("m= holds non-token characters"));
    }
    // <port>[/<number of ports>]
    let port_text = port_field.split('/').next().unwrap_or(port_field);
    let port = port_text
        .parse::<u16>()
        .map_err(|_| syntax("m= port is not a number in 0..=65535"))?;
    Ok(Media {
        kind,
        port,
        proto,
        formats,
        ..Media::default()
    })
}

fn parse_rtpmap(value: &str) -> Option<RtpMap<'_>> {
    // <payload type> <encoding name>/<clock rate>[/<encoding parameters>]
    let (pt, rest) = value.split_once(' ')?;
    let pt = pt.trim().parse::<u8>().ok().filter(|pt| *pt < 128)?;
    let mut fields = rest.trim().split('/');
    let name = fields.next()?.trim();
    let rate = fields.next()?.trim().parse::<u32>().ok()?;
    let channels = match fields.next() {
        Some(c) => Some(c.trim().parse::<u32>().ok()?),
        None => None,
    };
    Some(RtpMap {
        pt,
        name,
        rate,
        channels,
    })
}

fn parse_ms(value: &str) -> Option<u32> {
    // Some phones write fractional ptime ("20.0"): keep the integer part.
    let int = value.trim().split('.').next()?;
    int.parse::<u32>().ok()
}

fn parse_offer(sdp: &str) -> Result<Offer<'_>, SdpError> {
    if sdp.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge {
            len: sdp.len(),
            max: MAX_SDP_LEN,
        });
    }
    let mut offer = Offer::default();
    let mut seen_version = false;
    for (index, raw) in sdp.split('\n').enumerate() {
        let line = index + 1;
        let text = raw.strip_suffix('\r').unwrap_or(raw);
        if text.trim().is_empty() {
            continue;
        }
        let mut chars = text.chars();
        let (Some(kind), Some('=')) = (chars.next(), chars.next()) else {
            if !seen_version {
                return Err(SdpError::NotSdp);
            }
            return Err(SdpError::Syntax {
                line,
                reason: "line is not <type>=<value>",
            });
        };
        let value = chars.as_str();
        if !seen_version {
            if kind == 'v' && value.trim() == "0" {
                seen_version = true;
                continue;
            }
            return Err(SdpError::NotSdp);
        }
        if !kind.is_ascii_lowercase() {
            return Err(SdpError::Syntax {
                line,
                reason: "line type is not a lowercase letter",
            });
        }
        match kind {
            'm' => {
                if offer.media.len() >= MAX_MEDIA {
                    let total = sdp.lines().filter(|l| l.starts_with("m=")).count();
                    return Err(SdpError::TooManyMedia(total));
                }
                offer.media.push(parse_media_line(value, line)?);
            }
            'c' => {
                let connection = parse_connection(value, line)?;
                match offer.media.last_mut() {
                    Some(media) => media.connection = Some(connection),
                    None => offer.connection = Some(connection),
                }
            }
            'a' => {
                let (name, attr_value) = match value.split_once(':') {
                    Some((n, v)) => (n.trim(), Some(v)),
                    None => (value.trim(), None),
                };
                let media = offer.media.last_mut();
                match (name, attr_value) {
                    ("rtpmap", Some(v)) => {
                        if let (Some(media), Some(map)) = (media, parse_rtpmap(v)) {
                            media.rtpmaps.push(map);
                        }
                    }
                    ("ptime", Some(v)) => {
                        let ms = parse_ms(v);
                        match media {
                            Some(media) => media.ptime = ms,
                            None => offer.ptime = ms,
                        }
                    }
                    ("maxptime", Some(v)) => {
                        let ms = parse_ms(v);
                        match media {
                            Some(media) => media.maxptime = ms,
                            None => offer.maxptime = ms,
                        }
                    }
                    (flag, None) => {
                        if let Some(direction) = Direction::from_attribute(flag) {
                            match media {
                                Some(media) => media.direction = Some(direction),
                                None => offer.direction = Some(direction),
                            }
                        }
                    }
                    _ => {}
                }
            }
            // o, s, t, b, i, u, e, p, z, k, r and any future type: not needed for the answer.
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NotSdp);
    }
    Ok(offer)
}

/// Which codec a format is, by its rtpmap or the static table.
fn format_codec(media: &Media<'_>, pt: u8) -> Option<G711Law> {
    match media.rtpmaps.iter().find(|m| m.pt == pt) {
        Some(map) => {
            if map.rate != 8000 || map.channels.is_some_and(|c| c != 1) {
                return None;
            }
            if map.name.eq_ignore_ascii_case("PCMU") {
                Some(G711Law::MuLaw)
            } else if map.name.eq_ignore_ascii_case("PCMA") {
                Some(G711Law::ALaw)
            } else {
                None
            }
        }
        None => match pt {
            0 => Some(G711Law::MuLaw),
            8 => Some(G711Law::ALaw),
            _ => None,
        },
    }
}

fn choose_ptime(offered: Option<u32>, max: Option<u32>) -> u32 {
    let mut ptime = match offered {
        Some(p) if SUPPORTED_PTIMES.contains(&p) => p,
        _ => 20,
    };
    if let Some(max) = max {
        if max < ptime {
            if let Some(&fit) = SUPPORTED_PTIMES.iter().rev().find(|&&p| p <= max) {
                ptime = fit;
            }
        }
    }
    ptime
}

/// What was chosen on the accepted m-line.
struct Choice {
    index: usize,
    codec: G711Law,
    payload_type: u8,
    dtmf_pt: Option<u8>,
}

fn choose(offer: &Offer<'_>) -> Result<Choice, SdpError> {
    let mut first_other_profile: Option<&str> = None;
    let mut saw_avp_audio = false;
    for (index, media) in offer.media.iter().enumerate() {
        if !media.kind.eq_ignore_ascii_case("audio") || media.port == 0 {
            continue;
        }
        if !media.proto.eq_ignore_ascii_case("RTP/AVP") {
            first_other_profile.get_or_insert(media.proto);
            continue;
        }
        saw_avp_audio = true;
        let pts = || media.formats.iter().filter_map(|f| f.parse::<u8>().ok());
        let Some((payload_type, codec)) = pts()
            .filter(|pt| *pt < 128)
            .find_map(|pt| format_codec(media, pt).map(|c| (pt, c)))
        else {
            continue;
        };
        let dtmf_pt = pts().find(|pt| {
            media.rtpmaps.iter().any(|m| {
                m.pt == *pt && m.rate == 8000 && m.name.eq_ignore_ascii_case("telephone-event")
            })
        });
        return Ok(Choice {
            index,
            codec,
            payload_type,
            dtmf_pt,
        });
    }
    if saw_avp_audio {
        Err(SdpError::NoCommonCodec)
    } else if let Some(profile) = first_other_profile {
        Err(SdpError::UnsupportedProfile(profile.to_string()))
    } else {
        Err(SdpError::NoAudio)
    }
}

/// Answers a phone's offer (initial or re-offer). See the module docs for the rules.
pub fn answer(offer: &str, local: &AnswerParams) -> Result<Negotiated, SdpError> {
    let parsed = parse_offer(offer)?;
    let choice = choose(&parsed)?;
    let Some(media) = parsed.media.get(choice.index) else {
        return Err(SdpError::NoAudio);
    };

    let connection = media
        .connection
        .as_ref()
        .or(parsed.connection.as_ref())
        .ok_or(SdpError::MissingConnection)?;
    let remote = match connection {
        Connection::Unicast(ip) => Some(SocketAddr::new(*ip, media.port)),
        Connection::Hold => None,
        Connection::Unsupported(text) => return Err(SdpError::UnsupportedAddress(text.clone())),
    };

    let offered_direction = media
        .direction
        .or(parsed.direction)
        .unwrap_or(Direction::SendRecv);
    let mut direction = offered_direction.mirror();
    if remote.is_none() {
        direction = direction.without_send();
    }
    let ptime_ms = choose_ptime(
        media.ptime.or(parsed.ptime),
        media.maxptime.or(parsed.maxptime),
    );

    let answer_sdp = write_answer(&parsed, &choice, local, ptime_ms, direction);
    Ok(Negotiated {
        remote,
        codec: choice.codec,
        payload_type: choice.payload_type,
        dtmf_pt: choice.dtmf_pt,
        ptime_ms,
        direction,
        answer_sdp,
    })
}

fn write_answer(
    offer: &Offer<'_>,
    choice: &Choice,
    local: &AnswerParams,
    ptime_ms: u32,
    direction: Direction,
) -> String {
    let addr_type = if local.ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut sdp = String::with_capacity(256);
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = write!(
        sdp,
        "v=0\r\no=patchbay {} {} IN {addr_type} {ip}\r\ns=patchbay\r\nc=IN {addr_type} {ip}\r\nt=0 0\r\n",
        local.session_id,
        local.session_version,
        ip = local.ip,
    );
    for (index, media) in offer.media.iter().enumerate() {
        if index != choice.index {
            // Rejected: port 0, the offer's own transport and formats (RFC 3264 §6).
            let _ = write!(sdp, "m={} 0 {}", media.kind, media.proto);
            for format in &media.formats {
                let _ = write!(sdp, " {format}");
            }
            sdp.push_str("\r\n");
            continue;
        }
        let pt = choice.payload_type;
        let _ = write!(sdp, "m=audio {} RTP/AVP {pt}", local.port);
        if let Some(dtmf) = choice.dtmf_pt {
            let _ = write!(sdp, " {dtmf}");
        }
        let _ = write!(
            sdp,
            "\r\na=rtpmap:{pt} {}/8000\r\n",
            choice.codec.encoding_name()
        );
        if let Some(dtmf) = choice.dtmf_pt {
            let _ = write!(
                sdp,
                "a=rtpmap:{dtmf} telephone-event/8000\r\na=fmtp:{dtmf} 0-15\r\n"
            );
        }
        let _ = write!(sdp, "a=ptime:{ptime_ms}\r\na={}\r\n", direction.as_str());
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptime_choice() {
        assert_eq!(choose_ptime(None, None), 20);
        assert_eq!(choose_ptime(Some(30), None), 30);
        assert_eq!(choose_ptime(Some(60), None), 20);
        assert_eq!(choose_ptime(Some(40), Some(30)), 30);
        assert_eq!(choose_ptime(None, Some(10)), 10);
        assert_eq!(choose_ptime(None, Some(5)), 20);
    }

    #[test]
    fn rtpmap_forms() {
        let m = parse_rtpmap("101 telephone-event/8000").unwrap();
        assert_eq!(
            (m.pt, m.name, m.rate, m.channels),
            (101, "telephone-event", 8000, None)
        );
        let m = parse_rtpmap("111 opus/48000/2").unwrap();
        assert_eq!(m.channels, Some(2));
        assert!(parse_rtpmap("200 PCMU/8000").is_none());
        assert!(parse_rtpmap("0 PCMU").is_none());
        assert!(parse_rtpmap("x PCMU/8000").is_none());
    }
}
