//! Media half of patchbay-sip: SDP answers, RTP, G.711, the jitter buffer, the mixer, and
//! end-to-end pipelines through real codecs checked by tone detection.
#![allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use audiopus::coder::{Decoder, Encoder};
use audiopus::{Application, Channels, SampleRate};
use patchbay_sip::g711::G711Law;
use patchbay_sip::jitter::{JitterBuffer, JitterConfig, Playout, PushOutcome};
use patchbay_sip::mixer::{Mixer, MixerConfig, SourceId, FRAME_SAMPLES};
use patchbay_sip::phone::{PhoneConfig, PhoneMedia, UplinkFrame};
use patchbay_sip::rtp::{telephone_event_sequence, RtpError, RtpPacket, TelephoneEvent};
use patchbay_sip::sdp::{self, AnswerParams, Direction, SdpError};
use patchbay_sip::tone;

// ------------------------------------------------------------------------------------ SDP

fn params() -> AnswerParams {
    AnswerParams {
        ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        port: 30000,
        session_id: 4242,
        session_version: 1,
    }
}

/// A phone-style offer: session header with a session-level `c=`, then `media`.
fn offer(media: &str) -> String {
    format!(
        "v=0\r\no=phone 1000 1000 IN IP4 198.51.100.7\r\ns=call\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n{media}"
    )
}

/// Checks the answer is RFC 4566-shaped: CRLF lines, `<type>=<value>`, v/o/s/c/t in order
/// before the first m=, a sane o= line, and `expect_m` m-lines.
fn assert_valid_answer(sdp: &str, expect_m: usize) {
    assert!(sdp.ends_with("\r\n"), "answer must end with CRLF: {sdp:?}");
    let lines: Vec<&str> = sdp.strip_suffix("\r\n").unwrap().split("\r\n").collect();
    for line in &lines {
        let b = line.as_bytes();
        assert!(
            b.len() >= 2 && b[0].is_ascii_lowercase() && b[1] == b'=',
            "bad line {line:?}"
        );
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
    let types: Vec<char> = lines.iter().map(|l| l.chars().next().unwrap()).collect();
    assert_eq!(&types[..5], &['v', 'o', 's', 'c', 't'], "{sdp}");
    assert_eq!(lines[0], "v=0");
    let o: Vec<&str> = lines[1][2..].split(' ').collect();
    assert_eq!(o.len(), 6, "o= has six fields");
    assert_eq!(o[3], "IN");
    assert_eq!(types.iter().filter(|&&t| t == 'm').count(), expect_m);
    // Nothing but a= lines after the first m= (we write no media-level c=/b=).
    let first_m = types.iter().position(|&t| t == 'm').unwrap();
    assert!(types[first_m..].iter().all(|&t| t == 'm' || t == 'a'));
}

#[test]
fn sdp_pcmu_only() {
    let n = sdp::answer(&offer("m=audio 49170 RTP/AVP 0\r\n"), &params()).unwrap();
    assert_eq!(n.codec, G711Law::MuLaw);
    assert_eq!(n.payload_type, 0);
    assert_eq!(n.dtmf_pt, None);
    assert_eq!(n.ptime_ms, 20);
    assert_eq!(n.direction, Direction::SendRecv);
    assert_eq!(n.remote, Some("198.51.100.7:49170".parse().unwrap()));
    assert!(!n.on_hold());
    assert_valid_answer(&n.answer_sdp, 1);
    assert!(n
        .answer_sdp
        .contains("o=patchbay 4242 1 IN IP4 203.0.113.5\r\n"));
    assert!(n.answer_sdp.contains("c=IN IP4 203.0.113.5\r\n"));
    assert!(n.answer_sdp.contains("m=audio 30000 RTP/AVP 0\r\n"));
    assert!(n.answer_sdp.contains("a=rtpmap:0 PCMU/8000\r\n"));
    assert!(n.answer_sdp.contains("a=ptime:20\r\n"));
    assert!(n.answer_sdp.contains("a=sendrecv\r\n"));
}

#[test]
fn sdp_pcma_only() {
    let n = sdp::answer(
        &offer("m=audio 49170 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!((n.codec, n.payload_type), (G711Law::ALaw, 8));
    assert!(n
        .answer_sdp
        .contains("m=audio 30000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"));
}

#[test]
fn sdp_codec_follows_offerer_preference() {
    let n = sdp::answer(&offer("m=audio 4000 RTP/AVP 8 0 18\r\n"), &params()).unwrap();
    assert_eq!(n.codec, G711Law::ALaw);
    let n = sdp::answer(&offer("m=audio 4000 RTP/AVP 18 0 8\r\n"), &params()).unwrap();
    assert_eq!(n.codec, G711Law::MuLaw);
    assert!(n.answer_sdp.contains("m=audio 30000 RTP/AVP 0\r\n"));
}

#[test]
fn sdp_dynamic_pcmu_mapping() {
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 pcmu/8000/1\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!((n.codec, n.payload_type), (G711Law::MuLaw, 96));
    assert!(n.answer_sdp.contains("a=rtpmap:96 PCMU/8000\r\n"));
    // A static number remapped to something else is not PCMU.
    let err = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 G729/8000\r\n"),
        &params(),
    )
    .unwrap_err();
    assert_eq!(err, SdpError::NoCommonCodec);
}

#[test]
fn sdp_telephone_event() {
    let media = "m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
                 a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    assert_eq!(n.dtmf_pt, Some(101));
    assert!(n.answer_sdp.contains("m=audio 30000 RTP/AVP 0 101\r\n"));
    assert!(n
        .answer_sdp
        .contains("a=rtpmap:101 telephone-event/8000\r\n"));
    assert!(n.answer_sdp.contains("a=fmtp:101 0-15\r\n"));
    assert_valid_answer(&n.answer_sdp, 1);

    // Only a 48 kHz telephone-event (the Opus one): not usable with G.711.
    let media = "m=audio 4000 RTP/AVP 0 110\r\na=rtpmap:110 telephone-event/48000\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    assert_eq!(n.dtmf_pt, None);
    assert!(!n.answer_sdp.contains("telephone-event"));
}

#[test]
fn sdp_no_common_codec_is_488() {
    let err = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 18 9\r\na=rtpmap:18 G729/8000\r\n"),
        &params(),
    )
    .unwrap_err();
    assert_eq!(err, SdpError::NoCommonCodec);
    assert_eq!(err.sip_status(), 488);
    // PCMU at the wrong clock rate or in stereo is not PCMU/8000 mono.
    let err = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 97\r\na=rtpmap:97 PCMU/16000\r\n"),
        &params(),
    )
    .unwrap_err();
    assert_eq!(err, SdpError::NoCommonCodec);
}

#[test]
fn sdp_savp_is_refused() {
    let media = "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n";
    let err = sdp::answer(&offer(media), &params()).unwrap_err();
    assert_eq!(err, SdpError::UnsupportedProfile("RTP/SAVP".into()));
    assert_eq!(err.sip_status(), 488);
    let webrtc = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
    assert!(matches!(
        sdp::answer(&offer(webrtc), &params()),
        Err(SdpError::UnsupportedProfile(_))
    ));
}

#[test]
fn sdp_best_effort_srtp_picks_the_plain_stream() {
    let media = "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\n\
                 m=audio 4002 RTP/AVP 0\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    assert_eq!(n.remote.unwrap().port(), 4002);
    let m: Vec<&str> = n
        .answer_sdp
        .lines()
        .filter(|l| l.starts_with("m="))
        .collect();
    assert_eq!(m, ["m=audio 0 RTP/SAVP 0", "m=audio 30000 RTP/AVP 0"]);
}

#[test]
fn sdp_no_audio() {
    let err = sdp::answer(&offer("m=video 5000 RTP/AVP 96\r\n"), &params()).unwrap_err();
    assert_eq!(err, SdpError::NoAudio);
    assert_eq!(err.sip_status(), 488);
    // A disabled audio stream (port 0) is no audio either.
    let err = sdp::answer(&offer("m=audio 0 RTP/AVP 0\r\n"), &params()).unwrap_err();
    assert_eq!(err, SdpError::NoAudio);
    let err = sdp::answer(
        "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n",
        &params(),
    )
    .unwrap_err();
    assert_eq!(err, SdpError::NoAudio);
}

#[test]
fn sdp_hold_with_sendonly() {
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(n.remote.is_some());
    assert!(n.on_hold());
    assert!(n.answer_sdp.contains("a=recvonly\r\n"));
    assert!(!n.answer_sdp.contains("a=sendrecv"));

    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=inactive\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.direction, Direction::Inactive);
    assert!(n.answer_sdp.contains("a=inactive\r\n"));

    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.direction, Direction::SendOnly);

    // Session-level direction applies when the m-line has none.
    let o = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\na=sendonly\r\n\
             m=audio 4000 RTP/AVP 0\r\n";
    assert_eq!(
        sdp::answer(o, &params()).unwrap().direction,
        Direction::RecvOnly
    );
}

#[test]
fn sdp_hold_with_zero_address() {
    let o = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\n";
    let n = sdp::answer(o, &params()).unwrap();
    assert_eq!(n.remote, None);
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(n.on_hold());
    assert!(n.answer_sdp.contains("a=recvonly\r\n"));
    // Our own address is still real.
    assert!(n.answer_sdp.contains("c=IN IP4 203.0.113.5\r\n"));
    let o = o.replace("RTP/AVP 0\r\n", "RTP/AVP 0\r\na=sendonly\r\n");
    assert_eq!(
        sdp::answer(&o, &params()).unwrap().direction,
        Direction::RecvOnly
    );
    let o = o.replace("a=sendonly", "a=recvonly");
    assert_eq!(
        sdp::answer(&o, &params()).unwrap().direction,
        Direction::Inactive
    );
}

#[test]
fn sdp_video_is_rejected_with_port_zero_in_order() {
    let media = "m=video 5000 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\n\
                 m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
                 m=application 6000 UDP/BFCP *\r\n\
                 m=audio 4010 RTP/AVP 8\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    assert_valid_answer(&n.answer_sdp, 4);
    let m: Vec<&str> = n
        .answer_sdp
        .lines()
        .filter(|l| l.starts_with("m="))
        .collect();
    assert_eq!(
        m,
        [
            "m=video 0 RTP/AVP 96 97",
            "m=audio 30000 RTP/AVP 0 101",
            "m=application 0 UDP/BFCP *",
            "m=audio 0 RTP/AVP 8",
        ]
    );
    assert_eq!(n.remote.unwrap().port(), 4000);
}

#[test]
fn sdp_connection_levels() {
    // Media-level c= wins over the session's.
    let media = "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 192.0.2.99\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    assert_eq!(n.remote, Some("192.0.2.99:4000".parse().unwrap()));
    // Session-level only.
    let n = sdp::answer(&offer("m=audio 4000 RTP/AVP 0\r\n"), &params()).unwrap();
    assert_eq!(n.remote, Some("198.51.100.7:4000".parse().unwrap()));
    // Media-level only.
    let o = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n\
             c=IN IP4 192.0.2.1\r\n";
    assert_eq!(
        sdp::answer(o, &params()).unwrap().remote,
        Some("192.0.2.1:4000".parse().unwrap())
    );
    // Neither.
    let o = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert_eq!(
        sdp::answer(o, &params()).unwrap_err(),
        SdpError::MissingConnection
    );
    // Not something we can send to.
    let fqdn = offer("m=audio 4000 RTP/AVP 0\r\nc=IN IP4 pbx.example.com\r\n");
    assert!(matches!(
        sdp::answer(&fqdn, &params()),
        Err(SdpError::UnsupportedAddress(_))
    ));
    let multicast = offer("m=audio 4000 RTP/AVP 0\r\nc=IN IP4 224.2.1.1/127\r\n");
    assert!(matches!(
        sdp::answer(&multicast, &params()),
        Err(SdpError::UnsupportedAddress(_))
    ));
}

#[test]
fn sdp_ipv6() {
    let o = "v=0\r\no=- 1 1 IN IP6 2001:db8::7\r\ns=-\r\nc=IN IP6 2001:db8::7\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0\r\n";
    let local = AnswerParams {
        ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5)),
        ..params()
    };
    let n = sdp::answer(o, &local).unwrap();
    assert_eq!(
        n.remote,
        Some(SocketAddr::new("2001:db8::7".parse().unwrap(), 4000))
    );
    assert!(n.answer_sdp.contains("c=IN IP6 2001:db8::5\r\n"));
    assert!(n
        .answer_sdp
        .contains("o=patchbay 4242 1 IN IP6 2001:db8::5\r\n"));
}

#[test]
fn sdp_ptime() {
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=ptime:30\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.ptime_ms, 30);
    assert!(n.answer_sdp.contains("a=ptime:30\r\n"));
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=ptime:10\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.ptime_ms, 10);
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=ptime:60\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.ptime_ms, 20);
    let n = sdp::answer(&offer("m=audio 4000 RTP/AVP 0\r\na=ptime:x\r\n"), &params()).unwrap();
    assert_eq!(n.ptime_ms, 20);
    let n = sdp::answer(
        &offer("m=audio 4000 RTP/AVP 0\r\na=ptime:40\r\na=maxptime:30\r\n"),
        &params(),
    )
    .unwrap();
    assert_eq!(n.ptime_ms, 30);
}

#[test]
fn sdp_rtcp_attributes_are_ignored_and_lf_lines_accepted() {
    let o = "v=0\no=- 1 1 IN IP4 1.2.3.4\ns=-\nc=IN IP4 1.2.3.4\nt=0 0\n\
             m=audio 4000 RTP/AVP 0\na=rtcp:4001 IN IP4 1.2.3.4\na=rtcp-mux\n\n";
    let n = sdp::answer(o, &params()).unwrap();
    assert_eq!(n.remote, Some("1.2.3.4:4000".parse().unwrap()));
    assert!(!n.answer_sdp.contains("rtcp"));
}

#[test]
fn sdp_reoffer_uses_callers_version() {
    let o = offer("m=audio 4000 RTP/AVP 0\r\n");
    let first = sdp::answer(&o, &params()).unwrap();
    let second = sdp::answer(
        &o,
        &AnswerParams {
            session_version: 2,
            ..params()
        },
    )
    .unwrap();
    assert!(first.answer_sdp.contains("o=patchbay 4242 1 "));
    assert!(second.answer_sdp.contains("o=patchbay 4242 2 "));
    // A re-offer moving the phone to another port is followed.
    let moved = sdp::answer(&offer("m=audio 4100 RTP/AVP 0\r\n"), &params()).unwrap();
    assert_eq!(moved.remote.unwrap().port(), 4100);
}

#[test]
fn sdp_garbage_is_an_error() {
    for junk in [
        "",
        "hello",
        "\r\n\r\n",
        "v=1\r\n",
        "o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
        "\u{0}\u{1}\u{2}",
        "v=0\r\nthis is not sdp\r\n",
        "v=0\r\nm=audio\r\n",
        "v=0\r\nm=audio 4000\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP\r\n",
        "v=0\r\nm=audio 70000 RTP/AVP 0\r\n",
        "v=0\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\nc=IN\r\n",
        "v=0\r\nM=audio 4000 RTP/AVP 0\r\n",
        "v=0\r\nm=aud\u{e9}o 4000 RTP/AVP 0\r\n",
    ] {
        let err = sdp::answer(junk, &params()).unwrap_err();
        assert_eq!(err.sip_status(), 400, "{junk:?} gave {err:?}");
    }
    let huge = format!("v=0\r\n{}", "a=x\r\n".repeat(20_000));
    assert!(matches!(
        sdp::answer(&huge, &params()),
        Err(SdpError::TooLarge { .. })
    ));
    let many = offer(&"m=video 5000 RTP/AVP 96\r\n".repeat(65));
    assert_eq!(
        sdp::answer(&many, &params()).unwrap_err(),
        SdpError::TooManyMedia(65)
    );
}

// ------------------------------------------------------------------------------------ RTP

fn header(b0: u8, pt: u8) -> Vec<u8> {
    let mut h = vec![b0, pt, 0x12, 0x34, 0, 0, 0x01, 0x00, 0xDE, 0xAD, 0xBE, 0xEF];
    h.truncate(12);
    h
}

#[test]
fn rtp_parse_minimal_and_round_trip() {
    let mut bytes = header(0x80, 0x80);
    bytes.extend_from_slice(&[1, 2, 3]);
    let p = RtpPacket::parse(&bytes).unwrap();
    assert!(p.marker);
    assert_eq!(p.payload_type, 0);
    assert_eq!(p.sequence, 0x1234);
    assert_eq!(p.timestamp, 256);
    assert_eq!(p.ssrc, 0xDEAD_BEEF);
    assert_eq!(p.payload, &[1, 2, 3]);
    assert_eq!(p.to_bytes(), bytes);
}

#[test]
fn rtp_csrc_extension_and_padding() {
    // CC=2, X=1, P=1
    let mut bytes = header(0x80 | 0x20 | 0x10 | 2, 8);
    bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
    bytes.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // one-word extension
    bytes.extend_from_slice(&[9, 9, 9, 9]); // payload
    bytes.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
    let p = RtpPacket::parse(&bytes).unwrap();
    assert_eq!(p.csrc, [1, 2]);
    let ext = p.extension.unwrap();
    assert_eq!(ext.profile, 0xBEDE);
    assert_eq!(ext.data, &[0x10, 0xAA, 0, 0]);
    assert_eq!(p.payload, &[9, 9, 9, 9]);
    // Rebuilt without padding, then parsed to the same packet.
    let rebuilt = p.to_bytes();
    assert_eq!(rebuilt.len(), bytes.len() - 3);
    assert_eq!(RtpPacket::parse(&rebuilt).unwrap(), p);
}

#[test]
fn rtp_rejects_malformed() {
    assert_eq!(RtpPacket::parse(&[]), Err(RtpError::TooShort { len: 0 }));
    assert_eq!(
        RtpPacket::parse(&header(0x80, 0)[..11]),
        Err(RtpError::TooShort { len: 11 })
    );
    assert_eq!(
        RtpPacket::parse(&header(0x40, 0)),
        Err(RtpError::BadVersion(1))
    );
    assert_eq!(
        RtpPacket::parse(&header(0x00, 0)),
        Err(RtpError::BadVersion(0))
    );
    // CC=15 with 8 bytes after the header.
    let mut b = header(0x8F, 0);
    b.extend_from_slice(&[0; 8]);
    assert_eq!(
        RtpPacket::parse(&b),
        Err(RtpError::CsrcOverflow { count: 15, len: 20 })
    );
    // Extension header truncated, and extension length overrunning.
    let mut b = header(0x90, 0);
    b.extend_from_slice(&[0xBE, 0xDE]);
    assert!(matches!(
        RtpPacket::parse(&b),
        Err(RtpError::ExtensionOverflow { .. })
    ));
    let mut b = header(0x90, 0);
    b.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x05, 1, 2, 3, 4]);
    assert!(matches!(
        RtpPacket::parse(&b),
        Err(RtpError::ExtensionOverflow { .. })
    ));
    // Padding larger than what follows the header, and a zero padding count.
    let mut b = header(0xA0, 0);
    b.extend_from_slice(&[1, 2, 200]);
    assert_eq!(
        RtpPacket::parse(&b),
        Err(RtpError::BadPadding {
            padding: 200,
            available: 3
        })
    );
    let mut b = header(0xA0, 0);
    b.extend_from_slice(&[1, 2, 0]);
    assert!(matches!(
        RtpPacket::parse(&b),
        Err(RtpError::BadPadding { .. })
    ));
    // Padding that is exactly everything after the header leaves an empty payload.
    let mut b = header(0xA0, 0);
    b.extend_from_slice(&[0, 0, 3]);
    assert_eq!(RtpPacket::parse(&b).unwrap().payload, &[] as &[u8]);
}

#[test]
fn telephone_event_round_trip() {
    let e = TelephoneEvent {
        event: 11,
        end: true,
        volume: 10,
        duration: 1600,
    };
    let bytes = e.to_bytes();
    assert_eq!(bytes, [11, 0x8A, 0x06, 0x40]);
    assert_eq!(TelephoneEvent::parse(&bytes).unwrap(), e);
    assert_eq!(e.digit(), Some('#'));
    assert_eq!(
        TelephoneEvent::parse(&[1, 2, 3]),
        Err(RtpError::EventTooShort { len: 3 })
    );
    // Reserved bit ignored, volume is 6 bits.
    let e = TelephoneEvent::parse(&[3, 0x7F, 0, 160]).unwrap();
    assert_eq!((e.end, e.volume, e.duration), (false, 63, 160));
}

// ------------------------------------------------------------------------------------ G.711

#[test]
fn g711_known_values_and_round_trips() {
    use patchbay_sip::g711::{alaw_decode, alaw_encode, ulaw_decode, ulaw_encode};
    assert_eq!(ulaw_encode(0), 0xFF);
    assert_eq!(ulaw_decode(0xFF), 0);
    assert_eq!(alaw_encode(0), 0xD5);
    assert_eq!(alaw_decode(0xD5), 8);
    assert_eq!(ulaw_decode(0x80), 32124);
    assert_eq!(alaw_decode(0xAA), 32256);
    // Quantisation error bounded by half a step of the segment (µ-law steps grow to 1024).
    for s in (i16::MIN..=i16::MAX).step_by(97) {
        let e = (i32::from(ulaw_decode(ulaw_encode(s))) - i32::from(s)).abs();
        assert!(e <= 1024 || i32::from(s).abs() > 32124, "µ-law {s}: {e}");
        let e = (i32::from(alaw_decode(alaw_encode(s))) - i32::from(s)).abs();
        assert!(e <= 1024 || i32::from(s).abs() > 32256, "A-law {s}: {e}");
    }
    for law in [G711Law::MuLaw, G711Law::ALaw] {
        let mut bytes = Vec::new();
        law.encode(&[0; 4], &mut bytes);
        assert_eq!(bytes, [law.silence_byte(); 4]);
    }
}

#[test]
fn g711_tone_snr() {
    let tone = tone::sine(1000.0, 8000, 8000, 10_000);
    for law in [G711Law::MuLaw, G711Law::ALaw] {
        let mut bytes = Vec::new();
        law.encode(&tone, &mut bytes);
        let mut back = Vec::new();
        law.decode(&bytes, &mut back);
        let snr = tone::snr_db(&tone, &back);
        // G.711 gives about 38 dB SNR on a mid-level sine.
        assert!(snr > 33.0, "{law:?}: {snr:.1} dB");
        assert_eq!(
            tone::scan_dominant(&back, 8000, 100.0, 3900.0, 50.0),
            Some(1000.0)
        );
    }
}

// ------------------------------------------------------------------------------------ jitter

fn jb(delay: usize) -> JitterBuffer<u16> {
    JitterBuffer::new(JitterConfig {
        playout_delay: delay,
        max_latency: 10,
        capacity: 32,
        ..JitterConfig::default()
    })
}

fn drain(jb: &mut JitterBuffer<u16>, n: usize) -> Vec<Playout<u16>> {
    (0..n).map(|_| jb.pop()).collect()
}

#[test]
fn jitter_reorders() {
    let mut b = jb(3);
    assert_eq!(b.push(7, 10, 10), PushOutcome::Reset);
    assert_eq!(b.pop(), Playout::Empty); // pre-buffering
    assert_eq!(b.push(7, 12, 12), PushOutcome::Accepted);
    assert_eq!(b.push(7, 11, 11), PushOutcome::Accepted);
    assert_eq!(
        drain(&mut b, 4),
        [
            Playout::Packet(10),
            Playout::Packet(11),
            Playout::Packet(12),
            Playout::Empty
        ]
    );
}

#[test]
fn jitter_drops_duplicates_and_late() {
    let mut b = jb(2);
    b.push(7, 1, 1);
    assert_eq!(b.push(7, 1, 100), PushOutcome::Duplicate);
    b.push(7, 2, 2);
    assert_eq!(drain(&mut b, 2), [Playout::Packet(1), Playout::Packet(2)]);
    assert_eq!(b.push(7, 1, 1), PushOutcome::Late);
    assert_eq!(b.push(7, 2, 2), PushOutcome::Late);
    let s = b.stats();
    assert_eq!((s.duplicates, s.late, s.accepted), (1, 2, 2));
}

#[test]
fn jitter_reports_loss() {
    let mut b = jb(2);
    for seq in [1u16, 2, 4, 5] {
        b.push(7, seq, seq);
    }
    assert_eq!(
        drain(&mut b, 5),
        [
            Playout::Packet(1),
            Playout::Packet(2),
            Playout::Lost,
            Playout::Packet(4),
            Playout::Packet(5)
        ]
    );
    assert_eq!(b.stats().lost, 1);
    // The packet for the lost slot arrives too late to play.
    assert_eq!(b.push(7, 3, 3), PushOutcome::Late);
}

#[test]
fn jitter_wraps_around() {
    let mut b = jb(2);
    let seqs = [65533u16, 65535, 65534, 0, 2, 1, 3];
    for s in seqs {
        b.push(9, s, s);
    }
    let played: Vec<Playout<u16>> = drain(&mut b, 7);
    let expected: Vec<Playout<u16>> = [65533u16, 65534, 65535, 0, 1, 2, 3]
        .into_iter()
        .map(Playout::Packet)
        .collect();
    assert_eq!(played, expected);
    assert_eq!(b.stats().lost, 0);
}

#[test]
fn jitter_resets_on_ssrc_change_and_confirmed_jump() {
    let mut b = jb(1);
    b.push(1, 100, 100);
    b.push(1, 101, 101);
    assert_eq!(b.push(2, 5000, 5000), PushOutcome::Reset);
    assert_eq!(b.ssrc(), Some(2));
    assert_eq!(b.pop(), Playout::Packet(5000));
    // A lone wild sequence number is dropped...
    assert_eq!(b.push(2, 40000, 1), PushOutcome::Discontinuity);
    assert_eq!(b.push(2, 5001, 5001), PushOutcome::Accepted);
    assert_eq!(b.pop(), Playout::Packet(5001));
    // ...but a restart confirmed by the next packet is followed.
    assert_eq!(b.push(2, 20000, 20000), PushOutcome::Discontinuity);
    assert_eq!(b.push(2, 20001, 20001), PushOutcome::Reset);
    assert_eq!(b.pop(), Playout::Packet(20001));
    assert_eq!(b.stats().resets, 2);
}

#[test]
fn jitter_underrun_rebuffers_and_memory_is_bounded() {
    let mut b = jb(2);
    b.push(1, 1, 1);
    b.push(1, 2, 2);
    assert_eq!(
        drain(&mut b, 3),
        [Playout::Packet(1), Playout::Packet(2), Playout::Empty]
    );
    assert_eq!(b.stats().underruns, 1);
    b.push(1, 3, 3);
    assert_eq!(
        b.pop(),
        Playout::Empty,
        "pre-buffering again after the underrun"
    );
    b.push(1, 4, 4);
    assert_eq!(b.pop(), Playout::Packet(3));
    // A flood never holds more than the capacity.
    for seq in 5..1000u16 {
        b.push(1, seq, seq);
        assert!(b.len() <= 32);
    }
    // Playing resumes at the newest packets, latency capped.
    assert_eq!(b.pop(), Playout::Packet(990));
}

// ------------------------------------------------------------------------------------ mixer

fn feed(m: &mut Mixer, id: u64, freq: f64, frame_index: u64) {
    let pcm = tone::sine_from(freq, 8000, frame_index * 160, 160, 6000);
    assert!(m.push(SourceId(id), &pcm));
}

#[test]
fn mixer_two_tones_then_one() {
    let mut m = Mixer::new(MixerConfig::default());
    let mut out = Vec::new();
    for i in 0..40 {
        feed(&mut m, 1, 440.0, i);
        feed(&mut m, 2, 1000.0, i);
        out.extend(m.tick());
    }
    let tail = &out[out.len() - 3200..];
    let p440 = tone::goertzel_power(tail, 440.0, 8000);
    let p1000 = tone::goertzel_power(tail, 1000.0, 8000);
    let p700 = tone::goertzel_power(tail, 700.0, 8000);
    assert!(
        p440 > 1000.0 * p700 && p1000 > 1000.0 * p700,
        "{p440} {p1000} {p700}"
    );
    assert!((p440 / p1000 - 1.0).abs() < 0.1);

    assert!(m.remove(SourceId(2)));
    assert!(!m.remove(SourceId(2)));
    let mut out = Vec::new();
    for i in 40..80 {
        feed(&mut m, 1, 440.0, i);
        out.extend(m.tick());
    }
    let tail = &out[out.len() - 3200..];
    let p440 = tone::goertzel_power(tail, 440.0, 8000);
    let p1000 = tone::goertzel_power(tail, 1000.0, 8000);
    assert!(p440 > 10_000.0 * p1000, "{p440} {p1000}");
    assert_eq!(m.source_count(), 1);
    assert_eq!(m.stats().underruns, 0);
}

#[test]
fn mixer_starving_source_is_silent_and_counted() {
    let mut m = Mixer::new(MixerConfig::default());
    feed(&mut m, 1, 440.0, 0);
    feed(&mut m, 1, 440.0, 1);
    assert!(m.tick().iter().any(|&s| s != 0));
    assert!(m.tick().iter().any(|&s| s != 0));
    for _ in 0..10 {
        assert!(m.tick().iter().all(|&s| s == 0));
    }
    assert_eq!(m.stats().underruns, 1);
    // A lone frame after the gap waits for the pre-buffer.
    feed(&mut m, 1, 440.0, 2);
    assert!(m.tick().iter().all(|&s| s == 0));
    feed(&mut m, 1, 440.0, 3);
    assert!(m.tick().iter().any(|&s| s != 0));
    // Odd-sized pushes are re-framed.
    let mut m = Mixer::new(MixerConfig {
        prebuffer_frames: 1,
        ..MixerConfig::default()
    });
    m.push(SourceId(5), &[1; 100]);
    assert!(m.tick().iter().all(|&s| s == 0));
    m.push(SourceId(5), &[1; 100]);
    assert_eq!(m.tick(), [1; FRAME_SAMPLES]);
    assert_eq!(m.queued_samples(SourceId(5)), 40);
}

#[test]
fn mixer_source_limit() {
    let mut m = Mixer::new(MixerConfig {
        max_sources: 2,
        ..MixerConfig::default()
    });
    assert!(m.push(SourceId(1), &[0; 160]));
    assert!(m.push(SourceId(2), &[0; 160]));
    assert!(!m.push(SourceId(3), &[0; 160]));
    assert_eq!(m.stats().refused_pushes, 1);
}

// ------------------------------------------------------------------------------------ phone

const PHONE_SSRC: u32 = 0x1122_3344;
const DTMF_PT: u8 = 101;

fn phone(codec: G711Law, dtmf: bool, ptime_ms: u32) -> PhoneMedia {
    PhoneMedia::new(PhoneConfig {
        codec,
        payload_type: codec.static_payload_type(),
        dtmf_pt: dtmf.then_some(DTMF_PT),
        ptime_ms,
        ssrc: 0x5EED_0001,
    })
    .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Sends `packets` packets of a `freq` tone from the phone (ptime from the phone config),
/// polling the uplink as a runtime would, and returns the frames.
fn run_uplink(
    p: &mut PhoneMedia,
    law: G711Law,
    freq: f64,
    packets: usize,
    first_seq: u16,
) -> Vec<UplinkFrame> {
    let ptime = u64::from(p.config().ptime_ms);
    let spp = (ptime * 8) as usize;
    let t0 = Instant::now();
    let pcm = tone::sine(freq, 8000, spp * packets, 8000);
    let mut frames = Vec::new();
    let mut last = t0;
    for i in 0..packets {
        let mut payload = Vec::new();
        law.encode(&pcm[i * spp..(i + 1) * spp], &mut payload);
        let seq = first_seq.wrapping_add(i as u16);
        let bytes = RtpPacket::new(
            law.static_payload_type(),
            seq,
            (i * spp) as u32,
            PHONE_SSRC,
            i == 0,
            &payload,
        )
        .to_bytes();
        let now = t0 + ms(ptime * i as u64);
        p.receive_rtp(&bytes, now).unwrap();
        while let Some(f) = p.poll_uplink(now) {
            frames.push(f);
        }
        last = now;
    }
    // Let the buffer play out.
    for k in 1..=10 {
        let now = last + ms(20 * k);
        while let Some(f) = p.poll_uplink(now) {
            frames.push(f);
        }
    }
    frames
}

fn decode_opus_48k(frames: &[UplinkFrame]) -> Vec<i16> {
    let mut dec = Decoder::new(SampleRate::Hz48000, Channels::Mono).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0i16; 5760];
    for f in frames {
        let n = dec
            .decode(
                Some((&f.opus[..]).try_into().unwrap()),
                (&mut buf[..]).try_into().unwrap(),
                false,
            )
            .unwrap();
        assert_eq!(n, 960, "20 ms at 48 kHz");
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn e2e_phone_tone_reaches_sfu_as_opus() {
    for (law, ptime) in [
        (G711Law::MuLaw, 20),
        (G711Law::ALaw, 20),
        (G711Law::MuLaw, 30),
    ] {
        let mut p = phone(law, true, ptime);
        let packets = (1000 / ptime) as usize; // one second
        let frames = run_uplink(&mut p, law, 1000.0, packets, 65500);
        // Every whole 20 ms of the phone's audio became a frame; when the phone stopped,
        // five more frames were concealed (the first finishing a partial frame), then none.
        let s = p.stats();
        let whole = (packets * ptime as usize * 8 / 160) as u64;
        assert_eq!(s.uplink_underruns, 5, "{law:?}/{ptime}");
        assert_eq!(frames.len() as u64, whole + 5, "{law:?}/{ptime}");
        for pair in frames.windows(2) {
            assert_eq!(pair[1].rtp_time_48k.wrapping_sub(pair[0].rtp_time_48k), 960);
        }
        let pcm = decode_opus_48k(&frames);
        let steady = &pcm[960 * 5..pcm.len() - 960 * 5];
        assert_eq!(
            tone::scan_dominant(steady, 48000, 100.0, 3900.0, 50.0),
            Some(1000.0),
            "{law:?}/{ptime}"
        );
        assert_eq!(s.rtp_received, packets as u64);
        assert_eq!(s.lost_packets, 0);
        assert_eq!(s.g711_packets_decoded, packets as u64);
        assert_eq!(s.uplink_frames_encoded, frames.len() as u64);
    }
}

#[test]
fn e2e_uplink_conceals_loss_and_stops_when_phone_is_silent() {
    let mut p = phone(G711Law::MuLaw, false, 20);
    let t0 = Instant::now();
    let pcm = tone::sine(1000.0, 8000, 160 * 30, 8000);
    let mut frames = 0;
    for i in 0..30u64 {
        let now = t0 + ms(20 * i);
        if i != 10 && i != 11 {
            let mut payload = Vec::new();
            G711Law::MuLaw.encode(&pcm[i as usize * 160..(i as usize + 1) * 160], &mut payload);
            let b = RtpPacket::new(0, i as u16, i as u32 * 160, 9, false, &payload).to_bytes();
            p.receive_rtp(&b, now).unwrap();
        }
        while p.poll_uplink(now).is_some() {
            frames += 1;
        }
    }
    let s = p.stats();
    assert_eq!(s.lost_packets, 2);
    // Then the phone goes quiet: a few concealed frames, then nothing.
    let mut later = 0;
    for k in 1..=50u64 {
        while p.poll_uplink(t0 + ms(600 + 20 * k)).is_some() {
            later += 1;
        }
    }
    assert!(frames >= 26, "{frames}");
    assert!(later <= 3 + 5, "{later} frames after the phone stopped");
    // A wrong payload type and RTCP are refused and counted.
    let bogus = RtpPacket::new(18, 100, 0, 9, false, &[1, 2, 3]).to_bytes();
    assert_eq!(
        p.receive_rtp(&bogus, t0),
        Err(RtpError::UnexpectedPayloadType(18))
    );
    let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 9, 0, 0, 0, 0];
    assert_eq!(p.receive_rtp(&rtcp, t0), Err(RtpError::Rtcp(72)));
    assert_eq!(p.stats().rtp_rejected, 2);
}

/// A browser-like Opus sender: 48 kHz mono, 20 ms frames of a tone.
struct BrowserSender {
    enc: Encoder,
    freq: f64,
    frame: u64,
    ts0: u32,
}

impl BrowserSender {
    fn new(freq: f64, ts0: u32) -> Self {
        let enc = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
        BrowserSender {
            enc,
            freq,
            frame: 0,
            ts0,
        }
    }

    fn next(&mut self) -> (Vec<u8>, u32) {
        let pcm = tone::sine_from(self.freq, 48000, self.frame * 960, 960, 8000);
        let mut out = vec![0u8; 1500];
        let n = self.enc.encode(&pcm, &mut out).unwrap();
        out.truncate(n);
        let ts = self.ts0.wrapping_add((self.frame * 960) as u32);
        self.frame += 1;
        (out, ts)
    }
}

/// Decodes the audio packets `tick` produced (event packets are skipped).
fn decode_downlink(packets: &[Vec<u8>], law: G711Law, pcm: &mut Vec<i16>) {
    for bytes in packets {
        let rtp = RtpPacket::parse(bytes).unwrap();
        if rtp.payload_type == law.static_payload_type() {
            law.decode(rtp.payload, pcm);
        }
    }
}

#[test]
fn e2e_sfu_opus_reaches_phone_and_mixes() {
    let law = G711Law::MuLaw;
    let mut p = phone(law, true, 20);
    let mut a = BrowserSender::new(440.0, 1_000_000);
    let mut b = BrowserSender::new(1000.0, 4_294_900_000); // wraps during the test
    let t0 = Instant::now();
    let mut pcm = Vec::new();
    let mut seq_ts: Vec<(u16, u32)> = Vec::new();
    for i in 0..50u64 {
        let (frame, ts) = a.next();
        p.push_downlink(SourceId(440), &frame, ts);
        let (frame, ts) = b.next();
        p.push_downlink(SourceId(1000), &frame, ts);
        let out = p.tick(t0 + ms(20 * i));
        assert_eq!(out.len(), 1);
        let rtp = RtpPacket::parse(&out[0]).unwrap();
        assert_eq!(rtp.payload.len(), 160);
        assert_eq!(rtp.ssrc, 0x5EED_0001);
        assert_eq!(rtp.marker, i == 0);
        seq_ts.push((rtp.sequence, rtp.timestamp));
        decode_downlink(&out, law, &mut pcm);
    }
    for pair in seq_ts.windows(2) {
        assert_eq!(pair[1].0, pair[0].0.wrapping_add(1));
        assert_eq!(pair[1].1, pair[0].1.wrapping_add(160));
    }
    let tail = &pcm[pcm.len() - 4000..];
    let p440 = tone::goertzel_power(tail, 440.0, 8000);
    let p1000 = tone::goertzel_power(tail, 1000.0, 8000);
    let p700 = tone::goertzel_power(tail, 700.0, 8000);
    assert!(p440 > 100.0 * p700, "440: {p440} vs {p700}");
    assert!(p1000 > 100.0 * p700, "1000: {p1000} vs {p700}");

    p.remove_source(SourceId(1000));
    let mut pcm = Vec::new();
    for i in 50..100u64 {
        let (frame, ts) = a.next();
        p.push_downlink(SourceId(440), &frame, ts);
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut pcm);
    }
    let tail = &pcm[pcm.len() - 4000..];
    assert_eq!(
        tone::scan_dominant(tail, 8000, 200.0, 3800.0, 20.0),
        Some(440.0)
    );
    let p440 = tone::goertzel_power(tail, 440.0, 8000);
    let p1000 = tone::goertzel_power(tail, 1000.0, 8000);
    assert!(p440 > 1000.0 * p1000, "1000 Hz gone: {p440} vs {p1000}");
    let s = p.stats();
    assert_eq!(s.downlink_frames_decoded, 150);
    assert_eq!(s.downlink_decode_errors, 0);
    assert_eq!(s.rtp_sent, 100);
}

#[test]
fn e2e_downlink_alaw_ptime_40_and_gap_fill() {
    let law = G711Law::ALaw;
    let mut p = phone(law, false, 40);
    let mut a = BrowserSender::new(1000.0, 0);
    let t0 = Instant::now();
    let mut pcm = Vec::new();
    for i in 0..50u64 {
        // Two 20 ms frames per 40 ms tick; frame 41 is lost in the network.
        for _ in 0..2 {
            let (frame, ts) = a.next();
            if a.frame != 42 {
                p.push_downlink(SourceId(1), &frame, ts);
            }
        }
        let out = p.tick(t0 + ms(40 * i));
        let rtp = RtpPacket::parse(&out[0]).unwrap();
        assert_eq!(rtp.payload.len(), 320);
        decode_downlink(&out, law, &mut pcm);
    }
    let tail = &pcm[pcm.len() - 8000..];
    assert_eq!(
        tone::scan_dominant(tail, 8000, 200.0, 3800.0, 50.0),
        Some(1000.0)
    );
    let s = p.stats();
    assert_eq!(s.downlink_frames_decoded, 99);
    assert!(s.downlink_concealed >= 1);
    // A late duplicate is dropped.
    p.push_downlink(SourceId(1), &a.next().0, 0);
    assert_eq!(p.stats().downlink_late, 1);
}

#[test]
fn e2e_dtmf_from_phone() {
    let mut p = phone(G711Law::MuLaw, true, 20);
    let t0 = Instant::now();
    let mut seq = 1u16;
    let mut send = |p: &mut PhoneMedia, pt: u8, ts: u32, payload: &[u8], marker: bool| {
        let b = RtpPacket::new(pt, seq, ts, PHONE_SSRC, marker, payload).to_bytes();
        seq = seq.wrapping_add(1);
        p.receive_rtp(&b, t0).unwrap();
    };
    // '5': updates, three end copies, and a retransmitted end later.
    let events = telephone_event_sequence(5, 10, 800, 160);
    for (i, e) in events.iter().enumerate() {
        send(&mut p, DTMF_PT, 16000, &e.to_bytes(), i == 0);
    }
    send(&mut p, DTMF_PT, 16000, &events[6].to_bytes(), false);
    // '#' straight after.
    for (i, e) in telephone_event_sequence(11, 10, 480, 160)
        .iter()
        .enumerate()
    {
        send(&mut p, DTMF_PT, 17600, &e.to_bytes(), i == 0);
    }
    // '7' whose end packets are all lost; audio afterwards shows it is over.
    for e in telephone_event_sequence(7, 10, 800, 160)
        .iter()
        .filter(|e| !e.end)
    {
        send(&mut p, DTMF_PT, 20000, &e.to_bytes(), false);
    }
    assert_eq!(p.poll_dtmf(), Some('5'));
    assert_eq!(p.poll_dtmf(), Some('#'));
    assert_eq!(p.poll_dtmf(), None, "'7' has not ended yet");
    send(&mut p, 0, 21000, &[0xFF; 160], false);
    assert_eq!(p.poll_dtmf(), Some('7'));
    // A late end copy of '7' does not repeat it.
    let end7 = TelephoneEvent {
        event: 7,
        end: true,
        volume: 10,
        duration: 800,
    };
    send(&mut p, DTMF_PT, 20000, &end7.to_bytes(), false);
    assert_eq!(p.poll_dtmf(), None);
    // A short event payload is an error, not a panic.
    let b = RtpPacket::new(DTMF_PT, 999, 0, PHONE_SSRC, false, &[1]).to_bytes();
    assert_eq!(
        p.receive_rtp(&b, t0),
        Err(RtpError::EventTooShort { len: 1 })
    );
    assert_eq!(p.stats().dtmf_received, 3);
}

#[test]
fn e2e_dtmf_to_phone_rfc4733() {
    let mut p = phone(G711Law::MuLaw, true, 20);
    let t0 = Instant::now();
    let mut packets = Vec::new();
    for i in 0..3u64 {
        packets.extend(p.tick(t0 + ms(20 * i)));
    }
    p.send_dtmf('9', 100);
    p.send_dtmf('x', 100); // refused
    p.send_dtmf('#', 60);
    for i in 3..30u64 {
        packets.extend(p.tick(t0 + ms(20 * i)));
    }
    let parsed: Vec<RtpPacket<'_>> = packets
        .iter()
        .map(|b| RtpPacket::parse(b).unwrap())
        .collect();
    // One packet per tick, sequence and audio timestamps continuous.
    assert_eq!(parsed.len(), 30);
    for pair in parsed.windows(2) {
        assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
    }
    let base_ts = parsed[0].timestamp;
    let events: Vec<(usize, TelephoneEvent, bool, u32)> = parsed
        .iter()
        .enumerate()
        .filter(|(_, r)| r.payload_type == DTMF_PT)
        .map(|(i, r)| {
            (
                i,
                TelephoneEvent::parse(r.payload).unwrap(),
                r.marker,
                r.timestamp,
            )
        })
        .collect();
    for (i, r) in parsed.iter().enumerate() {
        if r.payload_type == 0 {
            assert_eq!(r.timestamp, base_ts.wrapping_add(160 * i as u32));
        }
    }
    // '9' for 100 ms: 4 updates + 3 ends, starting at tick 3 with its own timestamp.
    let nine: Vec<_> = events.iter().filter(|e| e.1.event == 9).collect();
    assert_eq!(nine.len(), 7);
    assert_eq!(nine[0].0, 3);
    assert!(nine[0].2, "first event packet carries the marker");
    assert!(nine[1..].iter().all(|e| !e.2));
    assert!(nine.iter().all(|e| e.3 == base_ts.wrapping_add(3 * 160)));
    let durations: Vec<u16> = nine.iter().map(|e| e.1.duration).collect();
    assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
    assert_eq!(nine.iter().filter(|e| e.1.end).count(), 3);
    // '#' after a 40 ms (two-tick) gap of audio.
    let hash: Vec<_> = events.iter().filter(|e| e.1.event == 11).collect();
    assert_eq!(hash[0].0, 3 + 7 + 2);
    assert_eq!(hash.last().unwrap().1.duration, 480);
    assert!(parsed[3 + 7].payload_type == 0 && parsed[3 + 7].marker);
    let s = p.stats();
    assert_eq!((s.dtmf_sent, s.dtmf_rejected), (2, 1));
}

#[test]
fn phone_digits_carry_their_duration() {
    let mut p = phone(G711Law::MuLaw, true, 20);
    let t0 = Instant::now();
    // '3' held 120 ms (960 samples): updates, then its three end copies.
    for (i, e) in telephone_event_sequence(3, 10, 960, 160).iter().enumerate() {
        let payload = e.to_bytes();
        let b = RtpPacket::new(DTMF_PT, 10 + i as u16, 8000, PHONE_SSRC, i == 0, &payload);
        p.receive_rtp(&b.to_bytes(), t0).unwrap();
    }
    assert_eq!(
        p.poll_digit().map(|d| (d.digit, d.duration_ms)),
        Some(('3', 120))
    );
    assert_eq!(p.poll_digit(), None, "one digit for the three end copies");
}

#[test]
fn browser_event_plays_once_per_digit_with_its_duration() {
    let mut p = phone(G711Law::MuLaw, true, 20);
    let t0 = Instant::now();
    let source = SourceId(7);
    // A browser's '8' on a 48 kHz clock, 200 ms: updates, then three end copies; then '2'.
    let eight = telephone_event_sequence(8, 10, 9600, 960);
    let queued: usize = eight
        .iter()
        .filter(|e| p.push_downlink_event(source, &e.to_bytes(), 96_000, 48_000))
        .count();
    assert_eq!(queued, 1, "only the first end packet queues the digit");
    let two = telephone_event_sequence(2, 10, 4800, 960);
    let queued: usize = two
        .iter()
        .filter(|e| p.push_downlink_event(source, &e.to_bytes(), 105_600, 48_000))
        .count();
    assert_eq!(queued, 1);
    let mut packets = Vec::new();
    for i in 0..40u64 {
        packets.extend(p.tick(t0 + ms(20 * i)));
    }
    let events: Vec<TelephoneEvent> = packets
        .iter()
        .map(|b| RtpPacket::parse(b).unwrap())
        .filter(|r| r.payload_type == DTMF_PT)
        .map(|r| TelephoneEvent::parse(r.payload).unwrap())
        .collect();
    let ends = |code: u8| events.iter().filter(|e| e.event == code && e.end).count();
    assert_eq!(
        (ends(8), ends(2)),
        (3, 3),
        "each digit sent once (three end copies)"
    );
    let longest = |code: u8| {
        events
            .iter()
            .filter(|e| e.event == code)
            .map(|e| e.duration)
            .max()
    };
    assert_eq!(longest(8), Some(1600), "200 ms at 8 kHz");
    assert_eq!(longest(2), Some(800), "100 ms at 8 kHz");
    assert_eq!(p.stats().dtmf_sent, 2);
}

#[test]
fn hold_tone_plays_while_nobody_is_heard() {
    let law = G711Law::MuLaw;
    let mut p = phone(law, true, 20);
    let t0 = Instant::now();
    let mut silent = Vec::new();
    for i in 0..5u64 {
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut silent);
    }
    assert!(tone::rms(&silent) < 20.0, "silence by default");
    p.set_hold_tone(425);
    let mut held = Vec::new();
    for i in 5..30u64 {
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut held);
    }
    assert_eq!(
        tone::dominant_frequency(&held, 8000, &[350.0, 425.0, 440.0, 1000.0]),
        Some(425.0)
    );
    p.set_hold_tone(0);
    let mut after = Vec::new();
    for i in 30..35u64 {
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut after);
    }
    assert!(tone::rms(&after) < 20.0, "silence again");
}

#[test]
fn e2e_dtmf_to_phone_in_band_without_telephone_event() {
    let law = G711Law::ALaw;
    let mut p = phone(law, false, 20);
    let t0 = Instant::now();
    p.send_dtmf('5', 200);
    let mut pcm = Vec::new();
    for i in 0..10u64 {
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut pcm);
    }
    let low = [697.0, 770.0, 852.0, 941.0];
    let high = [1209.0, 1336.0, 1477.0, 1633.0];
    assert_eq!(tone::dominant_frequency(&pcm, 8000, &low), Some(770.0));
    assert_eq!(tone::dominant_frequency(&pcm, 8000, &high), Some(1336.0));
    // After the tone: silence.
    let mut after = Vec::new();
    for i in 10..15u64 {
        decode_downlink(&p.tick(t0 + ms(20 * i)), law, &mut after);
    }
    assert!(tone::rms(&after) < 20.0);
}

#[test]
fn phone_from_negotiated_answer() {
    fn assert_send<T: Send>() {}
    assert_send::<PhoneMedia>();
    let media =
        "m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:30\r\n";
    let n = sdp::answer(&offer(media), &params()).unwrap();
    let config = PhoneConfig::from_negotiated(&n, 77);
    assert_eq!(
        config,
        PhoneConfig {
            codec: G711Law::ALaw,
            payload_type: 8,
            dtmf_pt: Some(101),
            ptime_ms: 30,
            ssrc: 77,
        }
    );
    let mut p = PhoneMedia::new(config).unwrap();
    let out = p.tick(Instant::now());
    let rtp = RtpPacket::parse(&out[0]).unwrap();
    assert_eq!(
        (rtp.payload_type, rtp.payload.len(), rtp.ssrc),
        (8, 240, 77)
    );
}

#[test]
fn phone_config_is_validated() {
    let ok = PhoneConfig {
        codec: G711Law::MuLaw,
        payload_type: 0,
        dtmf_pt: Some(101),
        ptime_ms: 20,
        ssrc: 1,
    };
    assert!(PhoneMedia::new(ok).is_ok());
    for bad in [
        PhoneConfig { ptime_ms: 25, ..ok },
        PhoneConfig {
            payload_type: 200,
            ..ok
        },
        PhoneConfig {
            dtmf_pt: Some(0),
            ..ok
        },
        PhoneConfig {
            payload_type: 72,
            ..ok
        },
    ] {
        assert!(PhoneMedia::new(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn phone_tick_jumps_timestamp_after_missed_ticks() {
    let mut p = phone(G711Law::MuLaw, false, 20);
    let t0 = Instant::now();
    let first = p.tick(t0);
    let a = RtpPacket::parse(&first[0]).unwrap().timestamp;
    let second = p.tick(t0 + ms(20));
    let b = RtpPacket::parse(&second[0]).unwrap();
    assert_eq!(b.timestamp, a.wrapping_add(160));
    assert!(!b.marker);
    // The caller stalled for 200 ms: the timestamp follows real time, with a marker.
    let third = p.tick(t0 + ms(220));
    let c = RtpPacket::parse(&third[0]).unwrap();
    assert_eq!(c.timestamp, a.wrapping_add(160 * 11));
    assert!(c.marker);
    assert_eq!(c.sequence, b.sequence.wrapping_add(1));
}

/// The interarrival jitter of the phone's audio (RFC 3550, 6.4.1) and the bytes counted: none
/// for packets on time, about the offset for packets alternately 10 ms late.
#[test]
fn phone_measures_interarrival_jitter_and_bytes() {
    let run = |late_every_other: bool| {
        let mut p = phone(G711Law::MuLaw, false, 20);
        let t0 = Instant::now();
        let payload = vec![0xFFu8; 160];
        for i in 0..200u64 {
            let late = if late_every_other && i % 2 == 1 {
                10
            } else {
                0
            };
            let b = RtpPacket::new(0, i as u16, i as u32 * 160, 9, false, &payload).to_bytes();
            p.receive_rtp(&b, t0 + ms(20 * i + late)).unwrap();
            while p.poll_uplink(t0 + ms(20 * i + late)).is_some() {}
        }
        p.stats()
    };
    let steady = run(false);
    assert_eq!(steady.interarrival_jitter_us, 0);
    assert_eq!(steady.audio_bytes_received, 200 * 160);
    // |D| is 10 ms for every packet: J converges on 10 ms.
    let shaky = run(true);
    assert!(
        (9_000..=10_000).contains(&shaky.interarrival_jitter_us),
        "{}",
        shaky.interarrival_jitter_us
    );
    // What is sent to the phone is counted in payload bytes (20 ms of G.711: 160 bytes).
    let mut p = phone(G711Law::MuLaw, false, 20);
    let t0 = Instant::now();
    let mut packets = 0;
    for i in 0..10u64 {
        packets += p.tick(t0 + ms(20 * i)).len() as u64;
    }
    let s = p.stats();
    assert_eq!(s.rtp_sent, packets);
    assert_eq!(s.bytes_sent, packets * 160);
}
