//! Arbitrary bytes into the SIP endpoint, as UDP datagrams and as TCP byte streams in arbitrary
//! chunks, with the application accepting or rejecting whatever calls come in and the virtual
//! clock moving forward. Nothing may panic, and everything the endpoint sends must frame as a
//! SIP message: a response, or a BYE for a call it answered.
//!
//! Input layout: byte 0 holds flags, byte 1 seeds chunk sizes; the rest is split at every
//! `0x00 0x00` pair into separate inputs.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use patchbay_sip::endpoint::{CallEvent, ConnectionId, Endpoint, EndpointConfig, SipError};
use patchbay_sip::message::{check_uri, Message, Method};
use patchbay_sip::transport::frame_datagram;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";

fn drain(ep: &mut Endpoint, now: Instant, flags: u8) {
    while let Some(t) = ep.poll_transmit() {
        let framed = frame_datagram(&t.bytes)
            .expect("output frames")
            .expect("not empty");
        match framed.0.into_message(framed.1) {
            Message::Response(_) => {}
            Message::Request(r) => {
                assert_eq!(r.line.method, Method::Bye);
                check_uri(&r.line.uri).expect("our Request-URI is a valid URI");
            }
        }
    }
    while let Some(event) = ep.poll_event() {
        match event {
            CallEvent::Incoming { call, .. } => {
                let result = if flags & 0x04 != 0 {
                    ep.accept(call, SDP, now)
                } else {
                    ep.reject(call, 486, "Busy", now)
                };
                // The call may already have ended (a CANCEL in the same TCP input).
                if let Err(e) = result {
                    assert!(matches!(e, SipError::UnknownCall(_)), "{e}");
                }
            }
            CallEvent::Established { call, .. } if flags & 0x08 != 0 => {
                if let Err(e) = ep.hangup(call, now) {
                    assert!(matches!(e, SipError::UnknownCall(_)), "{e}");
                }
            }
            CallEvent::CloseConnection { conn } => ep.connection_closed(conn),
            _ => {}
        }
    }
    while let Some(t) = ep.poll_transmit() {
        frame_datagram(&t.bytes).expect("output frames");
    }
}

fuzz_target!(|data: &[u8]| {
    let (flags, seed, rest) = match data {
        [flags, seed, rest @ ..] => (*flags, *seed, rest),
        _ => return,
    };
    let local: SocketAddr = "192.0.2.10:5060".parse().expect("address");
    let phone: SocketAddr = "198.51.100.7:5060".parse().expect("address");
    let mut config = EndpointConfig::new(local);
    config.rng_seed = u64::from(seed);
    let mut ep = Endpoint::new(config);
    let mut now = Instant::now();
    let mut chunk = usize::from(seed % 17) + 1;
    for (i, input) in split_inputs(rest).into_iter().enumerate() {
        if flags & 0x01 != 0 {
            ep.handle_datagram(now, phone, input);
        }
        if flags & 0x02 != 0 {
            let conn = ConnectionId((i % 3) as u64);
            for part in input.chunks(chunk) {
                ep.handle_stream(now, conn, phone, part);
            }
            chunk = chunk % 13 + 1;
        }
        if flags & 0x03 == 0 {
            ep.handle_datagram(now, phone, input);
        }
        drain(&mut ep, now, flags);
        if flags & 0x10 != 0 {
            now += Duration::from_millis(u64::from(seed) * 37);
            ep.handle_timeout(now);
            drain(&mut ep, now, flags);
        }
    }
    // Let every timer run out.
    for _ in 0..200 {
        let Some(deadline) = ep.poll_timeout() else {
            break;
        };
        now = now.max(deadline);
        ep.handle_timeout(now);
        drain(&mut ep, now, flags);
    }
});

fn split_inputs(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == 0 && data[i + 1] == 0 {
            out.push(&data[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}
