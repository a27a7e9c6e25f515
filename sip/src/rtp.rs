//! RTP packets (RFC 3550 §5.1) and RFC 4733 telephone events, as the phone leg uses them.
//!
//! This module owns the wire format only:
//! - [`RtpPacket::parse`] reads a version-2 packet with every length checked against the
//!   datagram: CSRC list, header extension (skipped, its bytes kept as a slice), and padding
//!   (removed). It borrows the datagram; it never allocates unless CSRCs are present.
//! - [`RtpPacket::to_bytes`] / [`RtpPacket::write_to`] build one (no padding is ever added).
//! - [`TelephoneEvent`] is the 4-byte RFC 4733 payload (event, end bit, volume, duration) with
//!   the DTMF digit mapping (events 0–15 ↔ `0-9 * # A-D`).
//! - [`telephone_event_sequence`] lays out the payloads of one event as a sender emits them.
//!
//! Nothing here panics on any input; malformed packets are an [`RtpError`] naming the fault.

use thiserror::Error;

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not an RTP packet this crate accepts (and, from
/// [`crate::phone::PhoneMedia::receive_rtp`], why a valid one was not used).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("RTP packet too short: {len} bytes, the fixed header alone is 12")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, only version 2 is supported")]
    BadVersion(u8),
    /// The CSRC count claims more 4-byte entries than the datagram holds.
    #[error("RTP CSRC list of {count} entries overruns the {len}-byte packet")]
    CsrcOverflow {
        /// CSRC count from the header.
        count: u8,
        /// Datagram length.
        len: usize,
    },
    /// The extension header or its declared length overruns the datagram.
    #[error("RTP header extension overruns the {len}-byte packet")]
    ExtensionOverflow {
        /// Datagram length.
        len: usize,
    },
    /// The padding count is zero or larger than what follows the header.
    #[error("RTP padding of {padding} bytes is invalid with {available} bytes after the header")]
    BadPadding {
        /// The last byte of the packet (the padding count).
        padding: u8,
        /// Bytes after the header, padding included.
        available: usize,
    },
    /// The payload type is in the range RFC 5761 reserves for RTCP (72–76): an RTCP packet
    /// arrived on the RTP port.
    #[error("payload type {0} is RTCP multiplexed on the RTP port")]
    Rtcp(u8),
    /// The payload type was not negotiated for this call.
    #[error("payload type {0} was not negotiated")]
    UnexpectedPayloadType(u8),
    /// A telephone-event payload shorter than 4 bytes.
    #[error("telephone-event payload of {len} bytes, 4 needed")]
    EventTooShort {
        /// Payload length.
        len: usize,
    },
    /// An audio payload whose length does not fit the negotiated codec (empty, or larger
    /// than 120 ms of G.711).
    #[error("audio payload of {len} bytes is not usable")]
    BadPayloadLength {
        /// Payload length.
        len: usize,
    },
}

/// A header extension (RFC 3550 §5.3.1), kept unparsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    /// The 16-bit profile-defined field (0xBEDE for RFC 8285 one-byte headers).
    pub profile: u16,
    /// The extension body, a multiple of 4 bytes long.
    pub data: &'a [u8],
}

/// One RTP packet, borrowing its payload from the datagram it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The marker bit (first packet of a talkspurt for audio; first packet of an RFC 4733
    /// event).
    pub marker: bool,
    /// 7-bit payload type; [`RtpPacket::write_to`] masks it to 7 bits.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources (at most 15; more are ignored when building).
    pub csrc: Vec<u32>,
    /// The header extension, if the X bit was set.
    pub extension: Option<RtpExtension<'a>>,
    /// The payload, padding removed.
    pub payload: &'a [u8],
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([
        *b.first()?,
        *b.get(1)?,
        *b.get(2)?,
        *b.get(3)?,
    ]))
}

impl<'a> RtpPacket<'a> {
    /// A packet with no CSRCs and no extension.
    pub fn new(
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        marker: bool,
        payload: &'a [u8],
    ) -> Self {
        RtpPacket {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrc: Vec::new(),
            extension: None,
            payload,
        }
    }

    /// Parses one datagram. Every length field is checked against `data`.
    pub fn parse(data: &'a [u8]) -> Result<Self, RtpError> {
        let len = data.len();
        let (Some(&b0), Some(&b1)) = (data.first(), data.get(1)) else {
            return Err(RtpError::TooShort { len });
        };
        if len < RTP_HEADER_LEN {
            return Err(RtpError::TooShort { len });
        }
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let csrc_count = b0 & 0x0F;
        let marker = b1 & 0x80 != 0;
        let payload_type = b1 & 0x7F;
        let too_short = RtpError::TooShort { len };
        let sequence = be16(data, 2).ok_or(too_short.clone())?;
        let timestamp = be32(data, 4).ok_or(too_short.clone())?;
        let ssrc = be32(data, 8).ok_or(too_short)?;

        let mut offset = RTP_HEADER_LEN;
        let csrc_end = offset + 4 * usize::from(csrc_count);
        if csrc_end > len {
            return Err(RtpError::CsrcOverflow {
                count: csrc_count,
                len,
            });
        }
        let mut csrc = Vec::new();
        while offset < csrc_end {
            let id = be32(data, offset).ok_or(RtpError::CsrcOverflow {
                count: csrc_count,
                len,
            })?;
            csrc.push(id);
            offset += 4;
        }

        let mut extension = None;
        if has_extension {
            let overflow = RtpError::ExtensionOverflow { len };
            let profile = be16(data, offset).ok_or(overflow.clone())?;
            let words = be16(data, offset + 2).ok_or(overflow.clone())?;
            let body_start = offset + 4;
            let body_end = body_start + 4 * usize::from(words);
            let body = data.get(body_start..body_end).ok_or(overflow)?;
            extension = Some(RtpExtension {
                profile,
                data: body,
            });
            offset = body_end;
        }

        let mut end = len;
        if has_padding {
            let available = len - offset;
            let padding = data.last().copied().unwrap_or(0);
            if padding == 0 || usize::from(padding) > available {
                return Err(RtpError::BadPadding { padding, available });
            }
            end -= usize::from(padding);
        }
        let payload = data.get(offset..end).ok_or(RtpError::TooShort { len })?;
        Ok(RtpPacket {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrc,
            extension,
            payload,
        })
    }

    /// The encoded length of this packet.
    pub fn encoded_len(&self) -> usize {
        let ext = self
            .extension
            .map_or(0, |e| 4 + e.data.len().div_ceil(4) * 4);
        RTP_HEADER_LEN + 4 * self.csrc.len().min(15) + ext + self.payload.len()
    }

    /// Appends the encoded packet to `out`. The payload type is masked to 7 bits, at most 15
    /// CSRCs are written, and an extension body that is not a multiple of 4 bytes is padded
    /// with zero bytes (one longer than 262140 bytes is truncated to that).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let csrcs = self.csrc.get(..self.csrc.len().min(15)).unwrap_or(&[]);
        let mut b0 = 0x80u8 | (csrcs.len() as u8);
        if self.extension.is_some() {
            b0 |= 0x10;
        }
        out.push(b0);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        for id in csrcs {
            out.extend_from_slice(&id.to_be_bytes());
        }
        if let Some(ext) = self.extension {
            let max = usize::from(u16::MAX) * 4;
            let body = ext.data.get(..ext.data.len().min(max)).unwrap_or(&[]);
            let words = body.len().div_ceil(4);
            out.extend_from_slice(&ext.profile.to_be_bytes());
            out.extend_from_slice(&(words as u16).to_be_bytes());
            out.extend_from_slice(body);
            out.resize(out.len() + (words * 4 - body.len()), 0);
        }
        out.extend_from_slice(self.payload);
    }

    /// The encoded packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.write_to(&mut out);
        out
    }
}

/// One RFC 4733 §2.3 telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code: 0–9, 10 `*`, 11 `#`, 12–15 `A`–`D` are the DTMF events.
    pub event: u8,
    /// The E bit: this is (one of the copies of) the final packet of the event.
    pub end: bool,
    /// Power level in -dBm0, 0–63 (larger is quieter); 6 bits on the wire.
    pub volume: u8,
    /// Duration so far, in timestamp units (samples at 8 kHz).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Parses the first 4 bytes of `payload` (RFC 4733 allows no other layout without RFC 2198
    /// redundancy, which is not negotiated here; trailing bytes are ignored).
    pub fn parse(payload: &[u8]) -> Result<Self, RtpError> {
        let bytes: [u8; 4] = payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(RtpError::EventTooShort { len: payload.len() })?;
        Ok(TelephoneEvent {
            event: bytes[0],
            end: bytes[1] & 0x80 != 0,
            volume: bytes[1] & 0x3F,
            duration: u16::from_be_bytes([bytes[2], bytes[3]]),
        })
    }

    /// The 4-byte payload (reserved bit zero, volume masked to 6 bits).
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The DTMF character of this event, if it is one of the 16 DTMF events.
    pub fn digit(self) -> Option<char> {
        event_digit(self.event)
    }
}

/// The DTMF character for an RFC 4733 event code (0–15), `None` for any other event.
pub fn event_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// The RFC 4733 event code for a DTMF character (`0-9`, `*`, `#`, `A-D`, case-insensitive).
pub fn digit_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => digit.to_digit(10).and_then(|d| u8::try_from(d).ok()),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(10 + (digit as u8 - b'A') + 2),
        'a'..='d' => Some(10 + (digit as u8 - b'a') + 2),
        _ => None,
    }
}

/// The payloads a sender emits for one event (RFC 4733 §2.5.1): one packet every
/// `packet_samples` with a growing duration (the first carries `packet_samples`), then three
/// copies of the final packet with the E bit and the total duration. All of them share the
/// event's RTP timestamp; the first is sent with the marker bit.
///
/// `duration_samples` is clamped to `packet_samples..=65535` (the 16-bit duration field;
/// 8.19 s at 8 kHz) and `packet_samples` to at least 1.
pub fn telephone_event_sequence(
    event: u8,
    volume: u8,
    duration_samples: u32,
    packet_samples: u32,
) -> Vec<TelephoneEvent> {
    let step = packet_samples.clamp(1, u32::from(u16::MAX));
    let total = duration_samples.clamp(step, u32::from(u16::MAX));
    let mut out = Vec::new();
    let mut elapsed = step;
    while elapsed < total {
        out.push(TelephoneEvent {
            event,
            end: false,
            volume,
            duration: elapsed as u16,
        });
        elapsed += step;
    }
    for _ in 0..3 {
        out.push(TelephoneEvent {
            event,
            end: true,
            volume,
            duration: total as u16,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_map_both_ways() {
        for (event, digit) in "0123456789*#ABCD".chars().enumerate() {
            assert_eq!(event_digit(event as u8), Some(digit));
            assert_eq!(digit_event(digit), Some(event as u8));
        }
        assert_eq!(digit_event('b'), Some(13));
        assert_eq!(event_digit(16), None);
        assert_eq!(digit_event('E'), None);
    }

    #[test]
    fn sequence_layout() {
        let seq = telephone_event_sequence(5, 10, 800, 160);
        let durations: Vec<u16> = seq.iter().map(|e| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        assert_eq!(seq.iter().filter(|e| e.end).count(), 3);
        let short = telephone_event_sequence(1, 10, 10, 160);
        assert_eq!(short.len(), 3);
        assert!(short.iter().all(|e| e.end && e.duration == 160));
    }
}
