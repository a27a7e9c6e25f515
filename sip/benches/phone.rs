//! CPU cost of one phone call per 20 ms: the phone talks (one G.711 packet in, one Opus frame
//! out to the SFU) while it listens to three subscribed Opus streams (three decodes, a mix, one
//! G.711 packet out). The browser-side encoding is done up front and not measured.
#![allow(clippy::disallowed_methods)] // a benchmark reads the clock

use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use criterion::{criterion_group, criterion_main, Criterion};
use patchbay_sip::g711::G711Law;
use patchbay_sip::mixer::SourceId;
use patchbay_sip::phone::{PhoneConfig, PhoneMedia};
use patchbay_sip::rtp::RtpPacket;
use patchbay_sip::tone;

/// Pre-encoded frames per source (one second, looped).
const FRAMES: usize = 50;

fn browser_frames(freq: f64) -> Vec<Vec<u8>> {
    let enc =
        Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).expect("opus encoder");
    (0..FRAMES as u64)
        .map(|i| {
            let pcm = tone::sine_from(freq, 48000, i * 960, 960, 8000);
            let mut out = vec![0u8; 1500];
            let n = enc.encode(&pcm, &mut out).expect("encode");
            out.truncate(n);
            out
        })
        .collect()
}

fn phone_payloads() -> Vec<Vec<u8>> {
    let pcm = tone::sine(1000.0, 8000, 160 * FRAMES, 8000);
    pcm.chunks(160)
        .map(|chunk| {
            let mut payload = Vec::new();
            G711Law::MuLaw.encode(chunk, &mut payload);
            payload
        })
        .collect()
}

fn per_call_20ms(c: &mut Criterion) {
    let sources: Vec<Vec<Vec<u8>>> = [440.0, 1000.0, 1500.0]
        .into_iter()
        .map(browser_frames)
        .collect();
    let payloads = phone_payloads();
    let mut phone = PhoneMedia::new(PhoneConfig {
        codec: G711Law::MuLaw,
        payload_type: 0,
        dtmf_pt: Some(101),
        ptime_ms: 20,
        ssrc: 0xBEEF,
    })
    .expect("phone");
    let mut now = Instant::now();
    let mut step: u64 = 0;

    let mut run_step = |phone: &mut PhoneMedia| {
        let i = (step % FRAMES as u64) as usize;
        let ts_48k = (step as u32).wrapping_mul(960);
        for (n, frames) in sources.iter().enumerate() {
            phone.push_downlink(SourceId(n as u64), &frames[i], ts_48k);
        }
        let rtp = RtpPacket::new(
            0,
            step as u16,
            (step as u32).wrapping_mul(160),
            0x1234,
            false,
            &payloads[i],
        )
        .to_bytes();
        phone.receive_rtp(&rtp, now).expect("valid rtp");
        while let Some(frame) = phone.poll_uplink(now) {
            std::hint::black_box(frame);
        }
        let out = phone.tick(now);
        now += Duration::from_millis(20);
        step += 1;
        out.len()
    };
    // Warm the pipeline past its pre-buffering.
    for _ in 0..10 {
        run_step(&mut phone);
    }

    c.bench_function("phone_20ms_3_sources", |b| {
        b.iter(|| std::hint::black_box(run_step(&mut phone)))
    });
    let stats = phone.stats();
    assert!(stats.uplink_frames_encoded > 0 && stats.downlink_frames_decoded > 0);
}

criterion_group!(benches, per_call_20ms);
criterion_main!(benches);
