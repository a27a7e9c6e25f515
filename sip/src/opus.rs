//! Opus (RFC 6716) for the bridge, a thin wrapper over libopus through `audiopus`.
//!
//! This module owns the two codec objects a phone call needs and the mapping of libopus errors
//! to [`OpusError`]:
//! - [`OpusEncoder`]: 8 kHz mono PCM in (the G.711 side's rate), VoIP application,
//!   20 ms = 160 samples per frame, out as one Opus packet for the SFU. The packets are ordinary
//!   Opus: a WebRTC receiver decodes them at 48 kHz and stamps them with a 48 kHz RTP clock.
//! - [`OpusDecoder`]: any Opus packet (browsers send 48 kHz mono or stereo, 10–60 ms) decoded
//!   straight to 8 kHz mono by libopus, which resamples and down-mixes internally; `None` asks
//!   for packet-loss concealment.
//!
//! A corrupt or empty packet is an error, never a panic. libopus keeps a frame's worth of
//! state, so each stream needs its own decoder.

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Bitrate, Channels, ErrorCode, SampleRate};
use thiserror::Error;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES_8K: usize = 160;
/// The largest Opus packet duration (120 ms) in samples at 8 kHz.
pub const MAX_PACKET_SAMPLES_8K: usize = 960;
/// Largest encoded packet we produce (RFC 6716 allows 1275 bytes per frame).
const MAX_ENCODED: usize = 1275;
/// Bitrate of the uplink encoder: narrowband SILK is transparent for G.711 input well below
/// this; the headroom goes to in-band FEC.
pub const UPLINK_BITRATE: i32 = 24_000;

/// What went wrong in libopus (or before calling it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpusError {
    /// The packet violates RFC 6716 (corrupt, truncated, impossible TOC).
    #[error("invalid Opus packet")]
    InvalidPacket,
    /// An empty packet was given; use `None` for a lost one.
    #[error("empty Opus packet")]
    EmptyPacket,
    /// The packet decodes to more than 120 ms, or the output buffer is too small.
    #[error("Opus output does not fit the buffer")]
    BufferTooSmall,
    /// The encoder was given a frame that is not 2.5, 5, 10, 20, 40 or 60 ms long.
    #[error("{0} samples is not an Opus frame size at 8 kHz")]
    BadFrameSize(usize),
    /// libopus refused an argument.
    #[error("libopus rejected an argument")]
    BadArgument,
    /// libopus could not allocate its state.
    #[error("libopus could not allocate")]
    AllocFail,
    /// Any other libopus failure (internal error, invalid state, unimplemented, unknown).
    #[error("libopus error: {0}")]
    Other(String),
}

impl From<audiopus::Error> for OpusError {
    fn from(err: audiopus::Error) -> Self {
        match err {
            audiopus::Error::EmptyPacket => OpusError::EmptyPacket,
            audiopus::Error::Opus(ErrorCode::InvalidPacket) => OpusError::InvalidPacket,
            audiopus::Error::Opus(ErrorCode::BufferTooSmall) => OpusError::BufferTooSmall,
            audiopus::Error::Opus(ErrorCode::BadArgument) => OpusError::BadArgument,
            audiopus::Error::Opus(ErrorCode::AllocFail) => OpusError::AllocFail,
            other => OpusError::Other(other.to_string()),
        }
    }
}

/// 8 kHz mono VoIP encoder.
pub struct OpusEncoder {
    inner: Encoder,
    out: Vec<u8>,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder").finish_non_exhaustive()
    }
}

impl OpusEncoder {
    /// An encoder for 8 kHz mono input, `Application::Voip`, [`UPLINK_BITRATE`], in-band FEC
    /// on (tuned for 5 % loss), DTX off (the bridge paces its own frames).
    pub fn new() -> Result<Self, OpusError> {
        let mut inner = Encoder::new(SampleRate::Hz8000, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::BitsPerSecond(UPLINK_BITRATE))?;
        inner.set_inband_fec(true)?;
        inner.set_packet_loss_perc(5)?;
        Ok(OpusEncoder {
            inner,
            out: vec![0; MAX_ENCODED],
        })
    }

    /// Encodes one frame of 8 kHz mono PCM (160 samples for 20 ms; 20, 40, 80, 320 and 480
    /// are also valid Opus frame sizes) into one Opus packet.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, OpusError> {
        if !matches!(pcm.len(), 20 | 40 | 80 | 160 | 320 | 480) {
            return Err(OpusError::BadFrameSize(pcm.len()));
        }
        let len = self.inner.encode(pcm, &mut self.out)?;
        let packet = self.out.get(..len).ok_or(OpusError::BufferTooSmall)?;
        Ok(packet.to_vec())
    }
}

/// Decoder of any Opus stream to 8 kHz mono.
pub struct OpusDecoder {
    inner: Decoder,
    out: Vec<i16>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder").finish_non_exhaustive()
    }
}

impl OpusDecoder {
    /// A decoder producing 8 kHz mono whatever the packets were encoded at.
    pub fn new() -> Result<Self, OpusError> {
        let inner = Decoder::new(SampleRate::Hz8000, Channels::Mono)?;
        Ok(OpusDecoder {
            inner,
            out: vec![0; MAX_PACKET_SAMPLES_8K],
        })
    }

    /// Decodes one packet, or with `None` conceals one lost 20 ms frame. Returns the PCM
    /// (8 kHz mono; 160 samples for a 20 ms packet), valid until the next call.
    pub fn decode(&mut self, packet: Option<&[u8]>) -> Result<&[i16], OpusError> {
        let n = match packet {
            Some(bytes) => {
                let packet = audiopus::packet::Packet::try_from(bytes)?;
                let output = audiopus::MutSignals::try_from(&mut self.out[..])?;
                self.inner.decode(Some(packet), output, false)?
            }
            None => {
                let frame = self
                    .out
                    .get_mut(..FRAME_SAMPLES_8K)
                    .ok_or(OpusError::BufferTooSmall)?;
                let output = audiopus::MutSignals::try_from(frame)?;
                self.inner.decode(None, output, false)?
            }
        };
        self.out.get(..n).ok_or(OpusError::BufferTooSmall)
    }

    /// Recovers the frame *before* `packet` from the in-band FEC data in `packet` (if the
    /// sender used FEC; otherwise libopus conceals). Returns 20 ms of PCM.
    pub fn decode_fec(&mut self, packet: &[u8]) -> Result<&[i16], OpusError> {
        let packet = audiopus::packet::Packet::try_from(packet)?;
        let frame = self
            .out
            .get_mut(..FRAME_SAMPLES_8K)
            .ok_or(OpusError::BufferTooSmall)?;
        let output = audiopus::MutSignals::try_from(frame)?;
        let n = self.inner.decode(Some(packet), output, true)?;
        self.out.get(..n).ok_or(OpusError::BufferTooSmall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_20ms() {
        let mut enc = OpusEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let pcm = crate::tone::sine(1000.0, 8000, 160, 8000);
        let packet = enc.encode(&pcm).unwrap();
        assert!(!packet.is_empty());
        assert_eq!(dec.decode(Some(&packet)).unwrap().len(), 160);
        assert_eq!(dec.decode(None).unwrap().len(), 160);
        assert_eq!(enc.encode(&pcm[..100]), Err(OpusError::BadFrameSize(100)));
        assert_eq!(dec.decode(Some(&[])).unwrap_err(), OpusError::EmptyPacket);
    }
}
