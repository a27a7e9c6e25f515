//! The synthetic media frames the in-memory browser client sends: each says who sent it, what
//! kind it is, its number and whether it is a keyframe, so a receiver can tell exactly which
//! frames reached it.

/// First byte of our synthetic payloads: marks them as ours.
const MAGIC: u8 = 0xA5;

/// The kind a synthetic frame says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Claims to be audio (an Opus frame, always a keyframe).
    Audio,
    /// Claims to be video (a VP8 frame).
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
