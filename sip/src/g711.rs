//! G.711 (ITU-T G.711, 1972): µ-law (PCMU, RTP payload type 0) and A-law (PCMA, payload
//! type 8) companding between 16-bit linear PCM and one byte per sample, at 8 kHz.
//!
//! This module owns the sample conversion and nothing else: no framing, no clock. The
//! conversions are computed (no lookup tables); every input byte and every `i16` has a defined
//! result, so nothing here can fail or panic.
//!
//! Ranges, as in the Recommendation: µ-law encodes 14 significant bits (linear values beyond
//! ±32635 clip to the largest code); A-law encodes 13 (the low three bits are dropped). A-law
//! has no code for zero: silence decodes to ±8.

/// Which G.711 companding law a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// µ-law, `PCMU/8000`, static RTP payload type 0 (North America, Japan).
    MuLaw,
    /// A-law, `PCMA/8000`, static RTP payload type 8 (most of the rest of the world).
    ALaw,
}

impl G711Law {
    /// The static RTP payload type of this law (RFC 3551): 0 for PCMU, 8 for PCMA.
    pub fn static_payload_type(self) -> u8 {
        match self {
            G711Law::MuLaw => 0,
            G711Law::ALaw => 8,
        }
    }

    /// The SDP encoding name: `PCMU` or `PCMA`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711Law::MuLaw => "PCMU",
            G711Law::ALaw => "PCMA",
        }
    }

    /// The byte that encodes digital silence in this law (`0xFF` µ-law, `0xD5` A-law).
    pub fn silence_byte(self) -> u8 {
        match self {
            G711Law::MuLaw => 0xFF,
            G711Law::ALaw => 0xD5,
        }
    }

    /// Encodes one linear sample.
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            G711Law::MuLaw => ulaw_encode(sample),
            G711Law::ALaw => alaw_encode(sample),
        }
    }

    /// Decodes one byte.
    pub fn decode_sample(self, byte: u8) -> i16 {
        match self {
            G711Law::MuLaw => ulaw_decode(byte),
            G711Law::ALaw => alaw_decode(byte),
        }
    }

    /// Encodes `pcm`, appending one byte per sample to `out`.
    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len());
        match self {
            G711Law::MuLaw => out.extend(pcm.iter().map(|&s| ulaw_encode(s))),
            G711Law::ALaw => out.extend(pcm.iter().map(|&s| alaw_encode(s))),
        }
    }

    /// Decodes `bytes`, appending one sample per byte to `out`.
    pub fn decode(self, bytes: &[u8], out: &mut Vec<i16>) {
        out.reserve(bytes.len());
        match self {
            G711Law::MuLaw => out.extend(bytes.iter().map(|&b| ulaw_decode(b))),
            G711Law::ALaw => out.extend(bytes.iter().map(|&b| alaw_decode(b))),
        }
    }
}

/// µ-law bias added before finding the segment (33 in 14-bit units, 0x84 in 16-bit units).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law can represent once the bias is added (32635 + 132 = 32767).
const ULAW_CLIP: i32 = 32635;

/// Encodes one 16-bit linear sample as µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let value = i32::from(sample);
    let (sign, magnitude) = if value < 0 {
        (0x80u8, -value)
    } else {
        (0x00u8, value)
    };
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS; // 0x84..=0x7FFF
                                                       // Segment (exponent) 0..=7: the position of the highest set bit above bit 7.
    let highest_bit = 31 - biased.leading_zeros() as i32; // 7..=14
    let exponent = highest_bit - 7;
    let mantissa = (biased >> (exponent + 3)) & 0x0F;
    // exponent is 0..=7 and mantissa 0..=15, so the cast keeps every bit.
    !(sign | ((exponent as u8) << 4) | mantissa as u8)
}

/// Decodes one µ-law byte to a 16-bit linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let code = !byte;
    let exponent = (code >> 4) & 0x07;
    let mantissa = i32::from(code & 0x0F);
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS; // 0..=32124
    let value = if code & 0x80 != 0 {
        -magnitude
    } else {
        magnitude
    };
    // |value| <= 32124 always fits.
    value as i16
}

/// Encodes one 16-bit linear sample as A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // Work on 13-bit values, as the Recommendation does.
    let value = i32::from(sample) >> 3; // -4096..=4095
    let (mask, magnitude) = if value >= 0 {
        (0xD5u8, value)
    } else {
        (0x55u8, -value - 1) // one's complement for negatives: 0..=4095
    };
    // Segment 0 covers 0..=31; each further segment doubles: segment = bits above bit 4.
    let segment = if magnitude < 32 {
        0
    } else {
        // highest set bit is 5..=11, so the segment is 1..=7
        (31 - magnitude.leading_zeros() as i32) - 4
    };
    let mantissa = if segment < 2 {
        (magnitude >> 1) & 0x0F
    } else {
        (magnitude >> segment) & 0x0F
    };
    // segment 0..=7 and mantissa 0..=15 fit in a byte.
    (((segment as u8) << 4) | mantissa as u8) ^ mask
}

/// Decodes one A-law byte to a 16-bit linear sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let code = byte ^ 0x55;
    let mantissa = i32::from(code & 0x0F) << 4;
    let segment = (code >> 4) & 0x07;
    let magnitude = match segment {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        s => (mantissa + 0x108) << (s - 1),
    }; // 8..=32256
    let value = if code & 0x80 != 0 {
        magnitude
    } else {
        -magnitude
    };
    value as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
        assert_eq!(alaw_decode(0x2A), -32256);
    }

    #[test]
    fn every_code_round_trips() {
        for byte in 0..=255u8 {
            let mu = ulaw_decode(byte);
            // 0x7F and 0xFF are both zero; the encoder picks the positive one.
            let expected = if byte == 0x7F { 0xFF } else { byte };
            assert_eq!(ulaw_encode(mu), expected, "µ-law {byte:#04x}");
            assert_eq!(alaw_encode(alaw_decode(byte)), byte, "A-law {byte:#04x}");
        }
    }

    #[test]
    fn encoding_is_monotonic() {
        let mut last_mu = i16::MIN;
        let mut last_a = i16::MIN;
        for s in (i16::MIN..=i16::MAX).step_by(7) {
            let mu = ulaw_decode(ulaw_encode(s));
            let a = alaw_decode(alaw_encode(s));
            assert!(mu >= last_mu && a >= last_a, "at {s}");
            last_mu = mu;
            last_a = a;
        }
    }
}
