//! Property tests: nothing in the media half panics on arbitrary input, and what it accepts it
//! answers coherently.
#![allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use patchbay_sip::g711::G711Law;
use patchbay_sip::jitter::{JitterBuffer, JitterConfig, Playout};
use patchbay_sip::mixer::SourceId;
use patchbay_sip::opus::OpusDecoder;
use patchbay_sip::phone::{PhoneConfig, PhoneMedia};
use patchbay_sip::rtp::{RtpPacket, TelephoneEvent};
use patchbay_sip::sdp::{self, AnswerParams};
use proptest::prelude::*;

fn params() -> AnswerParams {
    AnswerParams {
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        port: 30000,
        session_id: 1,
        session_version: 1,
    }
}

fn phone() -> PhoneMedia {
    PhoneMedia::new(PhoneConfig {
        codec: G711Law::MuLaw,
        payload_type: 0,
        dtmf_pt: Some(101),
        ptime_ms: 20,
        ssrc: 7,
    })
    .unwrap()
}

/// SDP-looking lines, mostly plausible, sometimes broken.
fn sdp_line() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("v=0".to_string()),
        4 => "o=[-a-z]{0,6} [0-9]{1,5} [0-9]{1,3} IN IP[46] [0-9.:]{0,16}",
        4 => "s=.{0,10}",
        4 => "t=[0-9] [0-9]",
        4 => "c=(IN|XX) (IP4|IP6|IPX) [0-9a-z.:/]{0,20}",
        4 => "c=IN IP4 (0\\.0\\.0\\.0|192\\.0\\.2\\.[0-9]{1,3}|224\\.0\\.0\\.1/3)",
        4 => "c=IN IP6 (::|2001:db8::[0-9a-f]{1,4})",
        4 => "m=(audio|video|application|x) [0-9]{1,6}(/[0-9])? (RTP/AVP|RTP/SAVP|RTP/AVPF|UDP/TLS/RTP/SAVPF|[A-Z/]{0,8})( [0-9*]{1,3}){0,6}",
        4 => "m=audio [0-9]{1,5} RTP/AVP( (0|8|18|96|101|[0-9]{1,3})){1,5}",
        4 => "a=rtpmap:[0-9]{1,4} (PCMU|PCMA|pcmu|telephone-event|opus|G729|[A-Za-z-]{0,8})/[0-9]{0,6}(/[0-9])?",
        4 => "a=fmtp:[0-9]{1,3} [0-9-,]{0,8}",
        4 => "a=(sendonly|recvonly|inactive|sendrecv|rtcp-mux|ptime:[0-9.]{0,4}|maxptime:[0-9]{0,4}|rtcp:[0-9]{0,6})",
        1 => "[a-zA-Z ]=.{0,20}",
        1 => ".{0,30}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn sdp_answer_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = sdp::answer(&text, &params());
        let with_header = format!("v=0\r\n{text}");
        let _ = sdp::answer(&with_header, &params());
    }

    #[test]
    fn sdp_answer_is_coherent_on_sdp_like_input(
        lines in proptest::collection::vec(sdp_line(), 0..16),
        lf_only in any::<bool>(),
    ) {
        let sep = if lf_only { "\n" } else { "\r\n" };
        let offer = format!("v=0{sep}{}{sep}", lines.join(sep));
        if let Ok(n) = sdp::answer(&offer, &params()) {
            let offered_m = offer.split(sep).filter(|l| l.starts_with("m=")).count();
            let answered_m = n.answer_sdp.split("\r\n").filter(|l| l.starts_with("m=")).count();
            prop_assert_eq!(offered_m, answered_m);
            prop_assert!(n.answer_sdp.starts_with("v=0\r\no=patchbay "));
            prop_assert!(n.answer_sdp.ends_with("\r\n"));
            prop_assert!(n.payload_type < 128);
            prop_assert!([10, 20, 30, 40].contains(&n.ptime_ms));
            for line in n.answer_sdp.split("\r\n").filter(|l| !l.is_empty()) {
                let b = line.as_bytes();
                prop_assert!(b.len() >= 2 && b[1] == b'=' && line.is_ascii(), "{:?}", line);
            }
        }
    }

    #[test]
    fn rtp_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(p) = RtpPacket::parse(&bytes) {
            prop_assert!(p.payload.len() + 12 <= bytes.len());
            // What parses re-encodes to something that parses to the same packet.
            let again = p.to_bytes();
            prop_assert_eq!(RtpPacket::parse(&again).unwrap(), p);
        }
        let _ = TelephoneEvent::parse(&bytes);
    }

    #[test]
    fn rtp_build_parse_round_trip(
        pt in 0u8..128, seq: u16, ts: u32, ssrc: u32, marker: bool,
        csrc in proptest::collection::vec(any::<u32>(), 0..15),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut p = RtpPacket::new(pt, seq, ts, ssrc, marker, &payload);
        p.csrc = csrc;
        let bytes = p.to_bytes();
        prop_assert_eq!(RtpPacket::parse(&bytes).unwrap(), p);
    }

    #[test]
    fn phone_receive_rtp_never_panics(
        datagrams in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..20),
    ) {
        let mut p = phone();
        let t0 = Instant::now();
        for (i, d) in datagrams.iter().enumerate() {
            let now = t0 + Duration::from_millis(20 * i as u64);
            let _ = p.receive_rtp(d, now);
            while p.poll_uplink(now).is_some() {}
            let _ = p.poll_dtmf();
            prop_assert_eq!(p.tick(now).len(), 1);
        }
    }

    #[test]
    fn phone_receive_rtp_valid_headers_never_panic(
        packets in proptest::collection::vec(
            (prop_oneof![Just(0u8), Just(101u8), Just(13u8), 0u8..128], any::<u16>(), any::<u32>(),
             prop_oneof![Just(7u32), any::<u32>()],
             proptest::collection::vec(any::<u8>(), 0..1200)),
            1..40),
        gaps in proptest::collection::vec(0u64..300, 40),
    ) {
        let mut p = phone();
        let mut now = Instant::now();
        for (i, (pt, seq, ts, ssrc, payload)) in packets.iter().enumerate() {
            now += Duration::from_millis(gaps.get(i).copied().unwrap_or(20));
            let bytes = RtpPacket::new(*pt, *seq, *ts, *ssrc, i % 3 == 0, payload).to_bytes();
            let _ = p.receive_rtp(&bytes, now);
            while p.poll_uplink(now).is_some() {}
            while p.poll_dtmf().is_some() {}
        }
    }

    #[test]
    fn phone_push_downlink_never_panics(
        frames in proptest::collection::vec(
            (0u64..4, proptest::collection::vec(any::<u8>(), 0..300), any::<u32>()), 1..30),
        remove in proptest::option::of(0u64..4),
        digits in "[0-9*#A-Dx ]{0,4}",
    ) {
        let mut p = phone();
        let t0 = Instant::now();
        for c in digits.chars() {
            p.send_dtmf(c, 50);
        }
        for (i, (source, opus, ts)) in frames.iter().enumerate() {
            p.push_downlink(SourceId(*source), opus, *ts);
            if Some(*source) == remove {
                p.remove_source(SourceId(*source));
            }
            let out = p.tick(t0 + Duration::from_millis(20 * i as u64));
            prop_assert_eq!(out.len(), 1);
            prop_assert!(RtpPacket::parse(&out[0]).is_ok());
        }
    }

    #[test]
    fn opus_decoder_never_panics(packet in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut d = OpusDecoder::new().unwrap();
        if let Ok(pcm) = d.decode(Some(&packet)) {
            prop_assert!(pcm.len() <= 960);
        }
        prop_assert_eq!(d.decode(None).map(|pcm| pcm.len()).unwrap_or(160), 160);
        let _ = d.decode_fec(&packet);
    }

    #[test]
    fn jitter_buffer_stays_bounded(
        pushes in proptest::collection::vec((0u32..3, any::<u16>(), any::<bool>()), 1..300),
    ) {
        let mut jb = JitterBuffer::new(JitterConfig { capacity: 16, max_latency: 8, ..JitterConfig::default() });
        let mut base = 0u16;
        for (ssrc, jump, pop) in pushes {
            // Mostly near-sequential traffic with occasional wild jumps.
            base = if jump % 16 == 0 { jump } else { base.wrapping_add(jump % 5) };
            let _ = jb.push(ssrc / 2, base, base);
            prop_assert!(jb.len() <= 16);
            if pop {
                if let Playout::Packet(v) = jb.pop() {
                    let _ = v;
                }
            }
        }
    }
}
