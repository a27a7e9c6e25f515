//! Forwarding an offered call to the server that hosts its session, as a stateless proxy
//! (RFC 3261 §16.11), in memory on a virtual clock: what leaves for the host, which answers
//! come back to the caller, and what follows the call's route.
#![allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time

#[path = "torture/harness.rs"]
mod harness;

use harness::*;
use patchbay_sip::endpoint::{
    CallEnd, CallEvent, CallId, ConnectionId, SipError, Transmit, Transport,
};

const HOST: &str = "10.0.0.7:5062";

/// INVITE → 100 → Incoming; returns the call.
fn offer(h: &mut Harness, branch: &str, call_id: &str) -> CallId {
    h.udp(&invite(
        branch,
        call_id,
        "User-To-User: abc.def.ghi;encoding=jwt\r\n",
        SDP_OFFER,
    ));
    assert_eq!(status(&h.one()), 100);
    match h.events().as_slice() {
        [CallEvent::Incoming { call, .. }] => *call,
        other => panic!("expected Incoming, got {other:?}"),
    }
}

/// The host's answer to a forwarded request: its Vias, From, To (tagged), Call-ID and CSeq.
fn answer_from_host(forwarded: &Transmit, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for via in headers(forwarded, "Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "Call-ID", "CSeq"] {
        out.push_str(&format!(
            "{name}: {}\r\n",
            header(forwarded, name).expect("header")
        ));
    }
    let to = header(forwarded, "To").expect("To");
    out.push_str(&format!("To: {to};tag=host1\r\n"));
    out.push_str("Contact: <sip:10.0.0.7:5062>\r\nContent-Length: 0\r\n\r\n");
    out
}

fn from_host(h: &mut Harness, text: &str) {
    let now = h.now;
    h.ep.handle_datagram(now, addr(HOST), text.as_bytes());
}

fn branch_of(via: &str) -> String {
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))
        .expect("a branch")
        .to_string()
}

#[test]
fn the_invite_goes_to_the_host_and_its_answers_come_back_to_the_caller() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "f1@phone");
    let now = h.now;
    h.ep.forward(call, addr(HOST), now).expect("forward");
    let sent = h.one();
    assert_eq!(sent.transport, Transport::Udp);
    assert_eq!(sent.destination, addr(HOST));
    assert_eq!(
        first_line(&sent),
        "INVITE sip:+15550001111@192.0.2.10 SIP/2.0"
    );
    let vias = headers(&sent, "Via");
    assert_eq!(vias.len(), 2, "ours on top of the caller's: {vias:?}");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/UDP {LOCAL};branch=z9hG4bK")),
        "{vias:?}"
    );
    assert_ne!(branch_of(&vias[0]), "z9hG4bKinv1");
    assert_eq!(
        vias[1],
        "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;received=198.51.100.7;rport=5060",
        "the caller's Via says where its answers go"
    );
    assert_eq!(header(&sent, "Max-Forwards").as_deref(), Some("69"));
    assert_eq!(
        header(&sent, "User-To-User").as_deref(),
        Some("abc.def.ghi;encoding=jwt")
    );
    assert_eq!(body(&sent), SDP_OFFER);
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::Forwarded
        }]
    );
    assert_eq!(h.ep.calls(), 0, "the call is the host's now");

    for (code, reason) in [(100, "Trying"), (180, "Ringing"), (200, "OK")] {
        from_host(&mut h, &answer_from_host(&sent, code, reason));
        let relayed = h.one();
        assert_eq!(status(&relayed), code);
        assert_eq!(relayed.transport, Transport::Udp);
        assert_eq!(relayed.destination, addr(PHONE));
        assert_eq!(
            headers(&relayed, "Via"),
            vec![vias[1].clone()],
            "our Via is taken off"
        );
        assert_eq!(
            header(&relayed, "Contact").as_deref(),
            Some("<sip:10.0.0.7:5062>"),
            "the caller's in-dialog requests go to the host"
        );
    }
    assert!(
        h.events().is_empty(),
        "the host's answers are not calls of ours"
    );
    let stats = h.ep.stats();
    assert_eq!((stats.forwarded_requests, stats.relayed_responses), (1, 3));
}

#[test]
fn a_retransmission_a_cancel_and_the_ack_of_a_refusal_follow_the_invite() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv2", "f2@phone");
    let now = h.now;
    h.ep.forward(call, addr(HOST), now).expect("forward");
    let first = h.one();
    let ours = branch_of(&headers(&first, "Via")[0]);
    h.events();

    // The caller did not hear our 100 and sends the INVITE again: it goes to the host with
    // the same branch (the host's transaction absorbs it), and the application is not asked.
    h.set(500);
    h.udp(&invite(
        "z9hG4bKinv2",
        "f2@phone",
        "User-To-User: abc.def.ghi;encoding=jwt\r\n",
        SDP_OFFER,
    ));
    let again = h.one();
    assert_eq!(again.destination, addr(HOST));
    assert_eq!(branch_of(&headers(&again, "Via")[0]), ours);
    assert!(
        h.events().is_empty(),
        "no second Incoming: {:?}",
        h.events()
    );

    // CANCEL: same branch as its INVITE, so the host finds the transaction.
    h.set(1_000);
    let cancel = "CANCEL sip:+15550001111@192.0.2.10 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv2;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\n\
         To: <sip:+15550001111@192.0.2.10>\r\n\
         Call-ID: f2@phone\r\n\
         CSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n";
    h.udp(cancel);
    let cancelled = h.one();
    assert!(first_line(&cancelled).starts_with("CANCEL "));
    assert_eq!(cancelled.destination, addr(HOST));
    assert_eq!(branch_of(&headers(&cancelled, "Via")[0]), ours);

    // The host answers 487; the caller ACKs it (the INVITE's branch): to the host, same branch.
    from_host(&mut h, &answer_from_host(&first, 487, "Request Terminated"));
    assert_eq!(status(&h.one()), 487);
    h.udp(&ack("z9hG4bKinv2", "f2@phone", 1, "host1"));
    let acked = h.one();
    assert!(first_line(&acked).starts_with("ACK "));
    assert_eq!(acked.destination, addr(HOST));
    assert_eq!(branch_of(&headers(&acked, "Via")[0]), ours);

    // 64·T1 after its last use the route is gone: a late CANCEL is ours to answer (481).
    h.advance(1_000 + 32_000 + 1);
    h.udp(cancel);
    let late = h.one();
    assert_eq!(status(&late), 481);
    assert_eq!(late.destination, addr(PHONE));
}

#[test]
fn a_response_with_a_branch_we_did_not_make_is_not_relayed() {
    let mut h = Harness::new();
    // Someone sends a "response" whose top Via looks like ours and whose next Via names a
    // victim: relaying it would make us a reflector.
    let forged = "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKpbfw0123456789abcdef\r\n\
         Via: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKvictim\r\n\
         From: <sip:a@b>;tag=x\r\n\
         To: <sip:c@d>;tag=y\r\n\
         Call-ID: forged\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n";
    from_host(&mut h, forged);
    assert!(h.transmits().is_empty());
    assert_eq!(h.ep.stats().unrelayable_responses, 1);
}

#[test]
fn a_caller_on_tcp_gets_the_answers_on_its_connection() {
    let mut h = Harness::new();
    let invite = invite("z9hG4bKtcp1", "f4@phone", "", SDP_OFFER)
        .replace("SIP/2.0/UDP 198.51.100.7", "SIP/2.0/TCP 198.51.100.7");
    h.tcp(9, invite.as_bytes());
    assert_eq!(status(&h.one()), 100);
    let [CallEvent::Incoming { call, .. }] = h.events()[..] else {
        panic!("expected Incoming");
    };
    let now = h.now;
    h.ep.forward(call, addr(HOST), now).expect("forward");
    let sent = h.one();
    assert_eq!(sent.transport, Transport::Udp, "forwarded over UDP");
    assert!(headers(&sent, "Via")[0].ends_with(";pbconn=9"));
    from_host(&mut h, &answer_from_host(&sent, 200, "OK"));
    let relayed = h.one();
    assert_eq!(relayed.transport, Transport::Tcp(ConnectionId(9)));
    assert_eq!(status(&relayed), 200);

    // The connection number is covered by the branch: changed, the answer goes nowhere.
    let tampered = answer_from_host(&sent, 200, "OK").replace(";pbconn=9", ";pbconn=8");
    from_host(&mut h, &tampered);
    assert!(h.transmits().is_empty());
}

#[test]
fn forwarding_to_itself_or_twice_is_refused() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv5", "f5@phone");
    let now = h.now;
    h.ep.forward(call, addr(LOCAL), now)
        .expect("refused as a loop");
    assert_eq!(status(&h.one()), 482);
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::Rejected { code: 482 }
        }]
    );
    assert_eq!(
        h.ep.forward(call, addr(HOST), now),
        Err(SipError::UnknownCall(call))
    );

    let call = offer(&mut h, "z9hG4bKinv6", "f6@phone");
    h.ep.accept(call, SDP_ANSWER, now).expect("accept");
    assert_eq!(status(&h.one()), 200);
    assert!(
        matches!(
            h.ep.forward(call, addr(HOST), now),
            Err(SipError::InvalidState { .. })
        ),
        "an answered call stays ours"
    );
}
