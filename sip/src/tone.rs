//! Test and diagnostic signal helpers: generate tones, measure them.
//!
//! This module owns nothing of the call path except the in-band DTMF generator the phone
//! pipeline falls back to. It exists so tests here and in other crates can say "a 1 kHz tone
//! went in, a 1 kHz tone came out" without a DSP dependency:
//! - [`sine`] and [`dtmf`] generate PCM;
//! - [`goertzel_power`] measures the power at one frequency (the Goertzel algorithm, a single
//!   DFT bin at an arbitrary frequency);
//! - [`dominant_frequency`] picks the strongest of some candidates, [`scan_dominant`] scans a
//!   range;
//! - [`rms`] gives the level.
//!
//! All functions are pure and total: empty inputs give zero power, `None`, or an empty vector.

use std::f64::consts::PI;

/// `n` samples of a sine at `freq_hz`, phase 0, peak `amplitude`.
pub fn sine(freq_hz: f64, sample_rate: u32, n: usize, amplitude: i16) -> Vec<i16> {
    sine_from(freq_hz, sample_rate, 0, n, amplitude)
}

/// Like [`sine`] but starting at sample index `start`, so consecutive calls continue the same
/// waveform (`sine_from(f, r, 0, 160, a)` then `sine_from(f, r, 160, 160, a)`).
pub fn sine_from(freq_hz: f64, sample_rate: u32, start: u64, n: usize, amplitude: i16) -> Vec<i16> {
    if sample_rate == 0 {
        return vec![0; n];
    }
    let step = 2.0 * PI * freq_hz / f64::from(sample_rate);
    let amp = f64::from(amplitude);
    (0..n)
        .map(|i| {
            let t = start.wrapping_add(i as u64) as f64;
            // `as` saturates, and |sin| <= 1 keeps it in range anyway.
            (amp * (step * t).sin()).round() as i16
        })
        .collect()
}

/// The two frequencies (low, high) of a DTMF digit (`0-9 * # A-D`), ITU-T Q.23.
pub fn dtmf_frequencies(digit: char) -> Option<(f64, f64)> {
    const LOW: [f64; 4] = [697.0, 770.0, 852.0, 941.0];
    const HIGH: [f64; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
    let (row, col) = match digit.to_ascii_uppercase() {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((*LOW.get(row)?, *HIGH.get(col)?))
}

/// `n` samples of the dual tone of a DTMF digit starting at sample `start`, each component
/// at peak `amplitude` (so the sum peaks at twice that). `None` for a non-DTMF character.
pub fn dtmf(
    digit: char,
    sample_rate: u32,
    start: u64,
    n: usize,
    amplitude: i16,
) -> Option<Vec<i16>> {
    let (low, high) = dtmf_frequencies(digit)?;
    let a = sine_from(low, sample_rate, start, n, amplitude);
    let b = sine_from(high, sample_rate, start, n, amplitude);
    Some(
        a.iter()
            .zip(&b)
            .map(|(x, y)| x.saturating_add(*y))
            .collect(),
    )
}

/// Power of `samples` at `freq_hz` (Goertzel), normalised by `n²` so that a full-scale sine
/// exactly on the frequency gives about `0.25 * amplitude²` regardless of length.
pub fn goertzel_power(samples: &[i16], freq_hz: f64, sample_rate: u32) -> f64 {
    if samples.is_empty() || sample_rate == 0 {
        return 0.0;
    }
    let omega = 2.0 * PI * freq_hz / f64::from(sample_rate);
    let coeff = 2.0 * omega.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    power / (n * n)
}

/// The candidate frequency with the most power in `samples`, `None` if there is no
/// candidate or no signal at all.
pub fn dominant_frequency(samples: &[i16], sample_rate: u32, candidates: &[f64]) -> Option<f64> {
    let mut best: Option<(f64, f64)> = None;
    for &f in candidates {
        let p = goertzel_power(samples, f, sample_rate);
        if p > 0.0 && best.is_none_or(|(_, bp)| p > bp) {
            best = Some((f, p));
        }
    }
    best.map(|(f, _)| f)
}

/// The strongest frequency between `low_hz` and `high_hz` in steps of `step_hz` (a coarse
/// spectrum scan). `None` when the range is empty or the signal silent.
pub fn scan_dominant(
    samples: &[i16],
    sample_rate: u32,
    low_hz: f64,
    high_hz: f64,
    step_hz: f64,
) -> Option<f64> {
    let valid = step_hz > 0.0 && high_hz >= low_hz; // false for NaNs too
    if !valid {
        return None;
    }
    let steps = ((high_hz - low_hz) / step_hz).floor();
    if !steps.is_finite() || steps > 100_000.0 {
        return None;
    }
    let candidates: Vec<f64> = (0..=steps as u32)
        .map(|i| low_hz + f64::from(i) * step_hz)
        .collect();
    dominant_frequency(samples, sample_rate, &candidates)
}

/// Root-mean-square level of `samples` (0 for none).
pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// Signal-to-noise ratio in dB of `test` against `reference` (same length; the shorter
/// length is used). Infinite when they are identical.
pub fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (&r, &t) in reference.iter().zip(test) {
        let r = f64::from(r);
        signal += r * r;
        let e = r - f64::from(t);
        noise += e * e;
    }
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone() {
        let s = sine(1000.0, 8000, 800, 10_000);
        assert_eq!(scan_dominant(&s, 8000, 100.0, 3900.0, 50.0), Some(1000.0));
        let p = goertzel_power(&s, 1000.0, 8000);
        assert!((p - 0.25 * 1e8).abs() / 2.5e7 < 0.05, "{p}");
        assert!(goertzel_power(&s, 2000.0, 8000) < p / 1000.0);
        assert_eq!(dominant_frequency(&[], 8000, &[1000.0]), None);
    }

    #[test]
    fn dtmf_has_both_tones() {
        let s = dtmf('5', 8000, 0, 800, 5000).unwrap();
        let cands = [697.0, 770.0, 852.0, 941.0];
        assert_eq!(dominant_frequency(&s, 8000, &cands), Some(770.0));
        let cands = [1209.0, 1336.0, 1477.0, 1633.0];
        assert_eq!(dominant_frequency(&s, 8000, &cands), Some(1336.0));
        assert!(dtmf('x', 8000, 0, 10, 1).is_none());
    }
}
