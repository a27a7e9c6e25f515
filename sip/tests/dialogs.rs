//! Scripted dialogs against the endpoint, in memory, on a virtual clock: every instant below is
//! an offset from the harness's base `Instant`, never the wall clock.
#![allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time

#[path = "torture/harness.rs"]
mod harness;

use harness::*;
use patchbay_sip::endpoint::{CallEnd, CallEvent, CallId, ConnectionId, SipError, Transport};
use patchbay_sip::message::{self, Message};
use patchbay_sip::uui;

/// INVITE → 100 → Incoming; returns the call.
fn offer(h: &mut Harness, branch: &str, call_id: &str, extra: &str) -> CallId {
    h.udp(&invite(branch, call_id, extra, SDP_OFFER));
    let trying = h.one();
    assert_eq!(status(&trying), 100);
    assert!(udp_to_phone(&trying));
    assert_eq!(to_tag(&trying), None, "100 Trying carries no To tag");
    let events = h.events();
    match events.as_slice() {
        [CallEvent::Incoming { call, .. }] => *call,
        other => panic!("expected Incoming, got {other:?}"),
    }
}

/// Offer + accept at the current instant; returns the call and our To tag.
fn answered(h: &mut Harness, call_id: &str) -> (CallId, String) {
    let call = offer(h, "z9hG4bKinv1", call_id, "");
    let now = h.now;
    h.ep.accept(call, SDP_ANSWER, now).expect("accept");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    (call, to_tag(&ok).expect("200 carries our To tag"))
}

/// Offer, accept and ACK; returns the call and our To tag.
fn established(h: &mut Harness, call_id: &str) -> (CallId, String) {
    let (call, tag) = answered(h, call_id);
    h.udp(&ack("z9hG4bKack1", call_id, 1, &tag));
    assert!(h.transmits().is_empty(), "ACK is never answered");
    assert_eq!(
        h.events(),
        vec![CallEvent::Established {
            call,
            ack_sdp: None
        }]
    );
    (call, tag)
}

#[test]
fn incoming_call_reports_the_offer_and_user_to_user() {
    let mut h = Harness::new();
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJhIjoiYWNjIn0.c2ln";
    let extra = format!(
        "User-To-User: 93d6f3c0be5845960b744fa28015d8ede84bd1a4;encoding=base64\r\nx-user-to-user: {jwt};encoding=jwt\r\n"
    );
    h.udp(&invite("z9hG4bKuui", "uui@phone", &extra, SDP_OFFER));
    assert_eq!(status(&h.one()), 100);
    let events = h.events();
    let [CallEvent::Incoming {
        source,
        transport,
        request_uri,
        from,
        to,
        sip_call_id,
        user_to_user,
        sdp_offer,
        ..
    }] = events.as_slice()
    else {
        panic!("expected Incoming, got {events:?}");
    };
    assert_eq!(*source, addr(PHONE));
    assert_eq!(*transport, Transport::Udp);
    assert_eq!(request_uri, "sip:+15550001111@192.0.2.10");
    assert_eq!(from, "sip:+15557654321@198.51.100.7");
    assert_eq!(to, "sip:+15550001111@192.0.2.10");
    assert_eq!(sip_call_id, "uui@phone");
    assert_eq!(user_to_user.len(), 2);
    assert_eq!(uui::participant_token(user_to_user).as_deref(), Ok(jwt));
    assert_eq!(
        uui::correlation_id(user_to_user).as_deref(),
        Some("93d6f3c0be5845960b744fa28015d8ede84bd1a4")
    );
    assert_eq!(sdp_offer.as_deref(), Some(SDP_OFFER));
    assert_eq!(h.ep.calls(), 1);
}

#[test]
fn accepted_200_is_retransmitted_at_t1_doubling_until_the_ack() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c1@phone", "");
    h.set(100);
    let now = h.now;
    h.ep.accept(call, SDP_ANSWER, now).expect("accept");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(body(&ok), SDP_ANSWER);
    assert_eq!(
        header(&ok, "Content-Type").as_deref(),
        Some("application/sdp")
    );
    assert_eq!(
        header(&ok, "Contact").as_deref(),
        Some("<sip:192.0.2.10:5060>")
    );
    assert_eq!(header(&ok, "Call-ID").as_deref(), Some("c1@phone"));
    assert_eq!(header(&ok, "CSeq").as_deref(), Some("1 INVITE"));
    assert_eq!(header(&ok, "Server").as_deref(), Some("patchbay-test"));
    assert_eq!(
        header(&ok, "Via").as_deref(),
        Some("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;received=198.51.100.7;rport=5060")
    );
    assert_eq!(
        header(&ok, "From").as_deref(),
        Some("\"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1")
    );
    let tag = to_tag(&ok).expect("To tag");

    // T1 = 500 ms doubling: 100 + 500, +1000, +2000, +4000 (then capped at T2 = 4 s).
    let sent = h.advance(8_000);
    let at: Vec<u64> = sent.iter().map(|(ms, _)| *ms).collect();
    assert_eq!(at, [600, 1_600, 3_600, 7_600]);
    for (_, t) in &sent {
        assert_eq!(t.bytes, ok.bytes, "retransmissions are the same 200");
    }
    h.udp(&ack("z9hG4bKack1", "c1@phone", 1, &tag));
    assert!(h.transmits().is_empty());
    assert_eq!(
        h.events(),
        vec![CallEvent::Established {
            call,
            ack_sdp: None
        }]
    );
    assert!(
        h.advance(60_000).is_empty(),
        "no retransmission after the ACK"
    );
    assert_eq!(h.ep.calls(), 1);
}

#[test]
fn without_ack_timer_h_ends_the_call_and_sends_bye() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h, "c2@phone");
    let sent = h.advance(40_000);
    let at: Vec<u64> = sent.iter().map(|(ms, _)| *ms).collect();
    assert_eq!(
        at,
        [
            500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500, 32_000,
            32_500, 33_500, 35_500, 39_500
        ]
    );
    let (_, bye) = &sent[10];
    assert!(first_line(bye).starts_with("BYE sip:alice@198.51.100.7:5060 "));
    assert_eq!(name_addr(bye, "From").tag(), Some(tag.as_str()));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::AckTimeout
        }]
    );
    // The rest are retransmissions of that BYE (timer E), not of the 200.
    for (_, t) in &sent[11..] {
        assert_eq!(t.bytes, bye.bytes);
    }
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn invite_retransmissions_are_answered_by_the_transaction() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c3@phone", "");
    let first = invite("z9hG4bKinv1", "c3@phone", "", SDP_OFFER);
    h.udp(&first);
    assert_eq!(
        status(&h.one()),
        100,
        "retransmitted INVITE gets the last provisional"
    );
    assert!(h.events().is_empty(), "no second Incoming");
    assert_eq!(h.ep.stats().retransmissions, 1);

    let now = h.now;
    h.ep.reject(call, 486, "Busy Here", now).expect("reject");
    let busy = h.one();
    h.udp(&first);
    let again = h.one();
    assert_eq!(
        again.bytes, busy.bytes,
        "retransmitted INVITE gets the final again"
    );
    assert!(h
        .events()
        .iter()
        .all(|e| !matches!(e, CallEvent::Incoming { .. })));
}

#[test]
fn redirect_answers_302_with_the_contact_to_dial() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c9@phone", "");
    let now = h.now;
    h.ep.redirect(
        call,
        "10.0.0.7:5060",
        "session hosted by another server",
        now,
    )
    .expect("redirect");
    let moved = h.one();
    assert_eq!(status(&moved), 302);
    assert_eq!(
        header(&moved, "Contact").as_deref(),
        Some("<sip:10.0.0.7:5060>")
    );
    assert_eq!(
        header(&moved, "Reason").as_deref(),
        Some("SIP ;cause=302 ;text=\"session hosted by another server\"")
    );
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::Rejected { code: 302 }
        }]
    );
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn reject_adds_a_reason_header_and_absorbs_the_ack() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c4@phone", "");
    let now = h.now;
    h.ep.reject(call, 486, "Busy Here", now).expect("reject");
    let busy = h.one();
    assert_eq!(status(&busy), 486);
    assert_eq!(first_line(&busy), "SIP/2.0 486 Busy Here");
    assert_eq!(
        header(&busy, "Reason").as_deref(),
        Some("SIP ;cause=486 ;text=\"Busy Here\"")
    );
    let tag = to_tag(&busy).expect("To tag");
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::Rejected { code: 486 }
        }]
    );
    assert_eq!(h.ep.calls(), 0);
    // Timer G retransmits the 486 until the ACK.
    let sent = h.advance(2_000);
    assert_eq!(
        sent.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
        [500, 1_500]
    );
    let ack_for_486 = format!(
        "ACK sip:+15550001111@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\nTo: <sip:+15550001111@192.0.2.10>;tag={tag}\r\nCall-ID: c4@phone\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    h.udp(&ack_for_486);
    assert!(h.transmits().is_empty());
    assert_eq!(
        h.ep.stats().stray_acks,
        0,
        "the ACK was absorbed by the transaction"
    );
    assert!(
        h.advance(60_000).is_empty(),
        "no retransmission after the ACK"
    );
    assert!(
        h.ep.poll_timeout().is_none(),
        "timer I ended the transaction"
    );

    assert_eq!(
        h.ep.reject(call, 486, "again", h.now),
        Err(SipError::UnknownCall(call))
    );
}

#[test]
fn reject_refuses_codes_outside_4xx_to_6xx() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c5@phone", "");
    assert_eq!(
        h.ep.reject(call, 200, "x", h.now),
        Err(SipError::InvalidStatus(200))
    );
    assert_eq!(
        h.ep.reject(call, 700, "x", h.now),
        Err(SipError::InvalidStatus(700))
    );
    assert!(h.transmits().is_empty());
}

#[test]
fn cancel_before_accept() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c6@phone", "");
    h.set(1_000);
    h.udp("CANCEL sip:+15550001111@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\nTo: <sip:+15550001111@192.0.2.10>\r\nCall-ID: c6@phone\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    let sent = h.transmits();
    assert_eq!(sent.len(), 2, "{}", describe(&sent));
    assert_eq!(status(&sent[0]), 200);
    assert_eq!(header(&sent[0], "CSeq").as_deref(), Some("1 CANCEL"));
    assert_eq!(status(&sent[1]), 487);
    assert_eq!(header(&sent[1], "CSeq").as_deref(), Some("1 INVITE"));
    let tag = to_tag(&sent[1]).expect("487 To tag");
    assert_eq!(
        to_tag(&sent[0]).as_deref(),
        Some(tag.as_str()),
        "same To tag"
    );
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::Cancelled
        }]
    );
    assert!(h.ep.accept(call, SDP_ANSWER, h.now).is_err());
    h.udp(&format!("ACK sip:+15550001111@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\nTo: <sip:+15550001111@192.0.2.10>;tag={tag}\r\nCall-ID: c6@phone\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"));
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty());
    assert_eq!(h.ep.stats().stray_acks, 0);
    assert!(h.advance(60_000).is_empty());
}

#[test]
fn cancel_after_the_200_gets_200_and_the_call_goes_on() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h, "c7@phone");
    h.udp("CANCEL sip:+15550001111@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKinv1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\nTo: <sip:+15550001111@192.0.2.10>\r\nCall-ID: c7@phone\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    let cancel_ok = h.one();
    assert_eq!(status(&cancel_ok), 200);
    assert_eq!(header(&cancel_ok, "CSeq").as_deref(), Some("1 CANCEL"));
    assert!(h.events().is_empty(), "the call is not ended");
    h.udp(&ack("z9hG4bKack1", "c7@phone", 1, &tag));
    assert_eq!(
        h.events(),
        vec![CallEvent::Established {
            call,
            ack_sdp: None
        }]
    );
}

#[test]
fn cancel_without_a_matching_invite_gets_481() {
    let mut h = Harness::new();
    h.udp("CANCEL sip:+15550001111@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKnothing\r\nMax-Forwards: 70\r\nFrom: <sip:a@198.51.100.7>;tag=x\r\nTo: <sip:b@192.0.2.10>\r\nCall-ID: none@phone\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&h.one()), 481);
}

#[test]
fn bye_from_the_phone_ends_the_call() {
    let mut h = Harness::new();
    let (call, tag) = established(&mut h, "c8@phone");
    let bye = in_dialog("BYE", "z9hG4bKbye1", "c8@phone", 2, &tag, "", "");
    h.udp(&bye);
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(header(&ok, "CSeq").as_deref(), Some("2 BYE"));
    assert_eq!(to_tag(&ok).as_deref(), Some(tag.as_str()));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::RemoteBye
        }]
    );
    assert_eq!(h.ep.calls(), 0);
    h.udp(&bye);
    assert_eq!(
        h.one().bytes,
        ok.bytes,
        "a retransmitted BYE gets the same 200"
    );
    assert!(h.events().is_empty());
}

#[test]
fn bye_for_an_unknown_dialog_gets_481() {
    let mut h = Harness::new();
    h.udp(&in_dialog(
        "BYE",
        "z9hG4bKbye9",
        "nobody@phone",
        2,
        "notours",
        "",
        "",
    ));
    assert_eq!(status(&h.one()), 481);
    h.udp("BYE sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKnotag\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&h.one()), 481, "BYE without To tag");
}

#[test]
fn our_hangup_sends_bye_retransmitted_until_200() {
    let mut h = Harness::new();
    let rr = "Record-Route: <sip:sbc1.example.net;lr>, <sip:sbc2.example.net;lr;ftag=x>\r\n";
    let call = offer(&mut h, "z9hG4bKinv1", "c9@phone", rr);
    h.ep.accept(call, SDP_ANSWER, h.now).expect("accept");
    let ok = h.one();
    assert_eq!(
        headers(&ok, "Record-Route"),
        ["<sip:sbc1.example.net;lr>, <sip:sbc2.example.net;lr;ftag=x>"]
    );
    let tag = to_tag(&ok).expect("tag");
    h.udp(&ack("z9hG4bKack1", "c9@phone", 1, &tag));
    h.events();
    h.set(10_000);
    h.ep.hangup(call, h.now).expect("hangup");
    let bye = h.one();
    assert_eq!(first_line(&bye), "BYE sip:alice@198.51.100.7:5060 SIP/2.0");
    assert!(udp_to_phone(&bye));
    let via = header(&bye, "Via").expect("Via");
    assert!(
        via.starts_with("SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK"),
        "{via}"
    );
    assert_eq!(
        headers(&bye, "Route"),
        [
            "<sip:sbc1.example.net;lr>",
            "<sip:sbc2.example.net;lr;ftag=x>"
        ]
    );
    assert_eq!(
        header(&bye, "From"),
        Some(format!("<sip:+15550001111@192.0.2.10>;tag={tag}"))
    );
    assert_eq!(
        header(&bye, "To").as_deref(),
        Some("\"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1")
    );
    assert_eq!(header(&bye, "Call-ID").as_deref(), Some("c9@phone"));
    assert_eq!(header(&bye, "CSeq").as_deref(), Some("1 BYE"));
    assert_eq!(header(&bye, "Max-Forwards").as_deref(), Some("70"));
    assert!(
        h.events().is_empty(),
        "the call ends when the BYE is answered"
    );
    assert!(h.ep.hangup(call, h.now).is_err(), "no second hangup");

    let sent = h.advance(12_000);
    assert_eq!(
        sent.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
        [10_500, 11_500]
    );
    assert!(sent.iter().all(|(_, t)| t.bytes == bye.bytes));
    let branch = message::parse_vias(&match wire(&bye) {
        Message::Request(r) => r.headers,
        Message::Response(_) => unreachable!(),
    })
    .expect("vias")[0]
        .branch()
        .expect("branch")
        .to_string();
    h.udp(&format!("SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:+15550001111@192.0.2.10>;tag={tag}\r\nTo: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\nCall-ID: c9@phone\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"));
    assert!(branch.starts_with("z9hG4bK"));
    assert!(h.transmits().is_empty());
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::LocalBye
        }]
    );
    assert!(
        h.advance(60_000).is_empty(),
        "no retransmission after the 200"
    );
    assert_eq!(h.ep.stats().stray_responses, 0);
}

#[test]
fn unanswered_bye_ends_with_timer_f() {
    let mut h = Harness::new();
    let (call, _) = established(&mut h, "c10@phone");
    h.ep.hangup(call, h.now).expect("hangup");
    let bye = h.one();
    let sent = h.advance(40_000);
    assert_eq!(
        sent.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(),
        [500, 1_500, 3_500, 7_500, 11_500, 15_500, 19_500, 23_500, 27_500, 31_500]
    );
    assert!(sent.iter().all(|(_, t)| t.bytes == bye.bytes));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::ByeTimeout
        }]
    );
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn hangup_before_the_ack_waits_for_it() {
    let mut h = Harness::new();
    let (call, tag) = answered(&mut h, "c11@phone");
    h.ep.hangup(call, h.now).expect("hangup is accepted");
    assert!(h.transmits().is_empty(), "no BYE before the ACK");
    h.set(200);
    h.udp(&ack("z9hG4bKack1", "c11@phone", 1, &tag));
    let bye = h.one();
    assert!(first_line(&bye).starts_with("BYE "));
    assert!(matches!(
        h.events().as_slice(),
        [CallEvent::Established { .. }]
    ));
}

#[test]
fn hangup_of_an_offered_call_is_refused() {
    let mut h = Harness::new();
    let call = offer(&mut h, "z9hG4bKinv1", "c12@phone", "");
    assert!(matches!(
        h.ep.hangup(call, h.now),
        Err(SipError::InvalidState { .. })
    ));
}

#[test]
fn reinvite_hold_is_reported_and_answered() {
    let mut h = Harness::new();
    let (call, tag) = established(&mut h, "c13@phone");
    let hold = SDP_OFFER.replace("a=sendrecv", "a=sendonly");
    h.set(5_000);
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKreinv",
        "c13@phone",
        2,
        &tag,
        "Contact: <sip:alice@198.51.100.7:5060>\r\n",
        &hold,
    ));
    assert_eq!(status(&h.one()), 100);
    assert_eq!(
        h.events(),
        vec![CallEvent::Reoffer {
            call,
            sdp_offer: hold.clone()
        }]
    );
    let held = SDP_ANSWER.replace("a=sendrecv", "a=recvonly");
    h.ep.answer_update(call, Ok(&held), h.now).expect("answer");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(body(&ok), held);
    assert_eq!(header(&ok, "CSeq").as_deref(), Some("2 INVITE"));
    assert_eq!(to_tag(&ok).as_deref(), Some(tag.as_str()));
    let sent = h.advance(6_000);
    assert_eq!(sent.iter().map(|(ms, _)| *ms).collect::<Vec<_>>(), [5_500]);
    h.udp(&ack("z9hG4bKack2", "c13@phone", 2, &tag));
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty(), "a re-INVITE's ACK is not reported");
    assert!(h.advance(20_000).is_empty());
    assert_eq!(
        h.ep.answer_update(call, Ok(&held), h.now),
        Err(SipError::InvalidState {
            call,
            action: "answer a re-INVITE",
            state: "no re-INVITE is pending"
        })
    );
}

#[test]
fn reinvite_can_be_refused_and_the_call_goes_on() {
    let mut h = Harness::new();
    let (call, tag) = established(&mut h, "c14@phone");
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKreinv",
        "c14@phone",
        2,
        &tag,
        "",
        SDP_OFFER,
    ));
    h.one();
    h.events();
    h.ep.answer_update(call, Err((488, "Not Acceptable Here")), h.now)
        .expect("answer");
    assert_eq!(status(&h.one()), 488);
    assert!(h.events().is_empty());
    assert_eq!(h.ep.calls(), 1);
}

#[test]
fn overlapping_reinvite_gets_491() {
    let mut h = Harness::new();
    let (call, tag) = established(&mut h, "c15@phone");
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKre1",
        "c15@phone",
        2,
        &tag,
        "",
        SDP_OFFER,
    ));
    assert_eq!(status(&h.one()), 100);
    h.events();
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKre2",
        "c15@phone",
        3,
        &tag,
        "",
        SDP_OFFER,
    ));
    let pending = h.one();
    assert_eq!(status(&pending), 491);
    assert_eq!(header(&pending, "CSeq").as_deref(), Some("3 INVITE"));
    assert!(h.events().is_empty());
    // Answered but not yet acknowledged: still pending.
    h.ep.answer_update(call, Ok(SDP_ANSWER), h.now)
        .expect("answer");
    assert_eq!(status(&h.one()), 200);
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKre3",
        "c15@phone",
        4,
        &tag,
        "",
        SDP_OFFER,
    ));
    assert_eq!(status(&h.one()), 491);
}

#[test]
fn offerless_reinvite_gets_our_current_sdp() {
    let mut h = Harness::new();
    let (_, tag) = established(&mut h, "c16@phone");
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKrefresh",
        "c16@phone",
        2,
        &tag,
        "",
        "",
    ));
    let sent = h.transmits();
    assert_eq!(sent.iter().map(status).collect::<Vec<_>>(), [100, 200]);
    assert_eq!(body(&sent[1]), SDP_ANSWER);
    assert!(h.events().is_empty());
}

#[test]
fn lower_cseq_in_dialog_gets_500() {
    let mut h = Harness::new();
    let (_, tag) = established(&mut h, "c17@phone");
    h.udp(&in_dialog(
        "INFO",
        "z9hG4bKinfo1",
        "c17@phone",
        5,
        &tag,
        "",
        "",
    ));
    assert_eq!(status(&h.one()), 200, "INFO is answered and ignored");
    h.udp(&in_dialog(
        "INFO",
        "z9hG4bKinfo2",
        "c17@phone",
        4,
        &tag,
        "",
        "",
    ));
    assert_eq!(status(&h.one()), 500);
    assert!(h.events().is_empty());
}

#[test]
fn options_gets_200_with_capabilities() {
    let mut h = Harness::new();
    h.udp("OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKopt\r\nMax-Forwards: 70\r\nFrom: <sip:monitor@198.51.100.7>;tag=m1\r\nTo: <sip:192.0.2.10>\r\nCall-ID: opt@phone\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(
        header(&ok, "Allow").as_deref(),
        Some("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")
    );
    assert_eq!(header(&ok, "Accept").as_deref(), Some("application/sdp"));
    assert_eq!(header(&ok, "Supported").as_deref(), Some(""));
    assert!(to_tag(&ok).is_some());
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn policy_refusals() {
    type Case<'a> = (&'a str, &'a str, u16, Option<(&'a str, &'a str)>);
    let cases: [Case; 4] = [
        ("z9hG4bKmf0", "Max-Forwards: 0\r\n", 483, None),
        (
            "z9hG4bKreq",
            "Require: 100rel, timer\r\n",
            420,
            Some(("Unsupported", "100rel, timer")),
        ),
        ("z9hG4bKacc", "Accept: text/plain\r\n", 406, None),
        (
            "z9hG4bKenc",
            "Content-Encoding: gzip\r\n",
            415,
            Some(("Accept", "application/sdp")),
        ),
    ];
    for (branch, extra, code, expected_header) in &cases {
        let mut h = Harness::new();
        let mut msg = invite(branch, "policy@phone", extra, SDP_OFFER);
        if extra.starts_with("Max-Forwards") {
            msg = msg.replacen("Max-Forwards: 70\r\n", "", 1);
        }
        h.udp(&msg);
        let refusal = h.one();
        assert_eq!(status(&refusal), *code, "{extra}");
        if let Some((name, value)) = expected_header {
            assert_eq!(header(&refusal, name).as_deref(), Some(*value));
        }
        assert!(h.events().is_empty());
        assert_eq!(h.ep.calls(), 0);
    }
    let mut h = Harness::new();
    h.udp(&invite("z9hG4bKct", "ct@phone", "", "").replace(
        "Content-Type: application/sdp\r\nContent-Length: 0",
        "Content-Type: application/isup\r\nContent-Length: 4\r\n\r\nISUP",
    ));
    assert_eq!(status(&h.one()), 415);
    h.udp(
        &invite("z9hG4bKupdate", "upd@phone", "", "")
            .replace("INVITE sip", "UPDATE sip")
            .replace("1 INVITE", "1 UPDATE"),
    );
    let not_allowed = h.one();
    assert_eq!(status(&not_allowed), 405);
    assert_eq!(
        header(&not_allowed, "Allow").as_deref(),
        Some("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")
    );
    h.udp(&invite("z9hG4bKtel", "tel@phone", "", SDP_OFFER).replace(
        "INVITE sip:+15550001111@192.0.2.10",
        "INVITE tel:+15550001111",
    ));
    assert_eq!(status(&h.one()), 100, "tel: Request-URIs are served");
    h.udp(
        &invite("z9hG4bKmailto", "mailto@phone", "", SDP_OFFER)
            .replace("INVITE sip:+15550001111@192.0.2.10", "INVITE mailto:a@b"),
    );
    assert_eq!(status(&h.one()), 416);
}

#[test]
fn looped_invite_gets_482() {
    let mut h = Harness::new();
    offer(&mut h, "z9hG4bKfirst", "loop@phone", "");
    h.udp(&invite("z9hG4bKsecond", "loop@phone", "", SDP_OFFER));
    assert_eq!(status(&h.one()), 482);
    assert!(h.events().is_empty());
    // A different Call-ID is a new call.
    offer(&mut h, "z9hG4bKthird", "other@phone", "");
    assert_eq!(h.ep.calls(), 2);
}

#[test]
fn offerless_invite_gets_the_answer_in_the_ack() {
    let mut h = Harness::new();
    h.udp(&invite("z9hG4bKlate", "late@phone", "", ""));
    assert_eq!(status(&h.one()), 100);
    let call = match h.events().as_slice() {
        [CallEvent::Incoming {
            call,
            sdp_offer: None,
            ..
        }] => *call,
        other => panic!("{other:?}"),
    };
    h.ep.accept(call, SDP_ANSWER, h.now)
        .expect("accept with our offer");
    let tag = to_tag(&h.one()).expect("tag");
    h.udp(&in_dialog(
        "ACK",
        "z9hG4bKlateack",
        "late@phone",
        1,
        &tag,
        "",
        SDP_OFFER,
    ));
    assert_eq!(
        h.events(),
        vec![CallEvent::Established {
            call,
            ack_sdp: Some(SDP_OFFER.to_string())
        }]
    );
}

#[test]
fn udp_content_length_frames_the_body() {
    let mut h = Harness::new();
    let too_long = invite("z9hG4bKcl1", "cl1@phone", "", SDP_OFFER).replace(
        &format!("Content-Length: {}", SDP_OFFER.len()),
        &format!("Content-Length: {}", SDP_OFFER.len() + 10),
    );
    h.udp(&too_long);
    let bad = h.one();
    assert_eq!(status(&bad), 400);
    assert!(first_line(&bad).contains("exceeds"), "{}", first_line(&bad));
    assert!(h.events().is_empty());

    let shorter = invite("z9hG4bKcl2", "cl2@phone", "", SDP_OFFER).replace(
        &format!("Content-Length: {}", SDP_OFFER.len()),
        "Content-Length: 3",
    );
    h.udp(&shorter);
    assert_eq!(status(&h.one()), 100);
    match h.events().as_slice() {
        [CallEvent::Incoming { sdp_offer, .. }] => assert_eq!(sdp_offer.as_deref(), Some("v=0")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn multiple_vias_are_copied_in_order() {
    let mut h = Harness::new();
    h.udp("OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP proxy1.example.net:5060;branch=z9hG4bKp1, SIP/2.0/TCP proxy2.example.net;branch=z9hG4bKp2;received=203.0.113.9\r\nVia: SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKorigin\r\nMax-Forwards: 68\r\nFrom: <sip:a@198.51.100.7>;tag=v1\r\nTo: <sip:192.0.2.10>\r\nCall-ID: vias@phone\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    let ok = h.one();
    assert_eq!(
        headers(&ok, "Via"),
        [
            "SIP/2.0/UDP proxy1.example.net:5060;branch=z9hG4bKp1;received=198.51.100.7",
            "SIP/2.0/TCP proxy2.example.net;branch=z9hG4bKp2;received=203.0.113.9",
            "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKorigin",
        ]
    );
}

#[test]
fn compact_headers_are_accepted() {
    let mut h = Harness::new();
    let msg = format!(
        "INVITE sip:+15550001111@192.0.2.10 SIP/2.0\r\nv: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKcompact\r\nf: <sip:+15557654321@198.51.100.7>;tag=c1\r\nt: <sip:+15550001111@192.0.2.10>\r\ni: compact@phone\r\nCSeq: 1 INVITE\r\nm: <sip:alice@198.51.100.7>\r\nc: application/sdp\r\nl: {}\r\n\r\n{SDP_OFFER}",
        SDP_OFFER.len()
    );
    h.udp(&msg);
    let trying = h.one();
    assert_eq!(status(&trying), 100);
    assert_eq!(header(&trying, "Call-ID").as_deref(), Some("compact@phone"));
    assert_eq!(
        header(&trying, "From").as_deref(),
        Some("<sip:+15557654321@198.51.100.7>;tag=c1")
    );
    let call = match h.events().as_slice() {
        [CallEvent::Incoming {
            call,
            sdp_offer: Some(sdp),
            ..
        }] if sdp == SDP_OFFER => *call,
        other => panic!("{other:?}"),
    };
    h.ep.accept(call, SDP_ANSWER, h.now).expect("accept");
    let ok = h.one();
    assert_eq!(
        header(&ok, "Contact").as_deref(),
        Some("<sip:192.0.2.10:5060>")
    );
}

#[test]
fn malformed_requests_get_400_saying_why() {
    let mut h = Harness::new();
    let no_call_id = invite("z9hG4bKnocid", "x", "", SDP_OFFER).replace("Call-ID: x\r\n", "");
    h.udp(&no_call_id);
    let bad = h.one();
    assert_eq!(first_line(&bad), "SIP/2.0 400 Missing Call-ID header");
    let bad_to = invite("z9hG4bKbadto", "y", "", SDP_OFFER).replace(
        "To: <sip:+15550001111@192.0.2.10>",
        "To: \"unterminated <sip:a@b>",
    );
    h.udp(&bad_to);
    assert_eq!(
        first_line(&h.one()),
        "SIP/2.0 400 Malformed To header: unterminated quoted string"
    );
    h.udp("garbage that is not SIP\r\n\r\n");
    assert!(h.transmits().is_empty());
    h.udp_bytes(&[0xff, 0x00, 0x13, 0x37]);
    assert!(h.transmits().is_empty());
    assert_eq!(h.ep.stats().unparseable, 2);
    assert_eq!(h.ep.stats().malformed_requests, 2);
}

/// Found by the sip_endpoint fuzz target: without a Contact, the From URI is the remote target
/// our BYE would go to, so a From URI that is not a URI is refused up front.
#[test]
fn invite_whose_remote_target_is_not_a_uri_gets_400() {
    let mut h = Harness::new();
    let bad_from = invite("z9hG4bKbadfrom", "z", "", SDP_OFFER)
        .replace("Contact: <sip:alice@198.51.100.7:5060>\r\n", "")
        .replace(
            "<sip:+15557654321@198.51.100.7>",
            "<sip:?aller@198.51.100.7>",
        );
    h.udp(&bad_from);
    assert_eq!(
        first_line(&h.one()),
        "SIP/2.0 400 Malformed From header: nothing after the URI scheme"
    );
    assert!(h.events().is_empty(), "no call is offered");
}

#[test]
fn stray_responses_are_dropped() {
    let mut h = Harness::new();
    h.udp("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKnotours\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: stray\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty());
    assert_eq!(h.ep.stats().stray_responses, 1);
}

// ---------------------------------------------------------------------------------------------
// TCP

fn tcp_options(branch: &str, cseq: u32) -> String {
    format!("OPTIONS sip:192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/TCP 198.51.100.7:5060;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:a@198.51.100.7>;tag=t1\r\nTo: <sip:192.0.2.10>\r\nCall-ID: tcp@phone\r\nCSeq: {cseq} OPTIONS\r\nContent-Length: 0\r\n\r\n")
}

#[test]
fn tcp_message_split_across_three_chunks() {
    let mut h = Harness::new();
    let msg =
        invite("z9hG4bKtcp1", "tcp1@phone", "", SDP_OFFER).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let bytes = msg.as_bytes();
    let (a, rest) = bytes.split_at(40);
    let (b, c) = rest.split_at(rest.len() - 30); // the last chunk cuts the body
    h.tcp(1, a);
    h.tcp(1, b);
    assert!(h.transmits().is_empty(), "incomplete body: nothing yet");
    h.tcp(1, c);
    let trying = h.one();
    assert_eq!(status(&trying), 100);
    assert_eq!(trying.transport, Transport::Tcp(ConnectionId(1)));
    let call = match h.events().as_slice() {
        [CallEvent::Incoming {
            call,
            transport: Transport::Tcp(ConnectionId(1)),
            sdp_offer: Some(sdp),
            ..
        }] if sdp == SDP_OFFER => *call,
        other => panic!("{other:?}"),
    };
    h.ep.accept(call, SDP_ANSWER, h.now).expect("accept");
    let ok = h.one();
    assert_eq!(
        header(&ok, "Contact").as_deref(),
        Some("<sip:192.0.2.10:5060;transport=tcp>")
    );
    // RFC 3261 §13.3.1.4: the 2xx is retransmitted whatever the transport.
    assert_eq!(h.advance(600).len(), 1);
}

#[test]
fn tcp_two_messages_in_one_chunk_and_keepalives() {
    let mut h = Harness::new();
    let both = format!(
        "\r\n\r\n{}\r\n\r\n{}\r\n",
        tcp_options("z9hG4bKt1", 1),
        tcp_options("z9hG4bKt2", 2)
    );
    h.tcp(2, both.as_bytes());
    let sent = h.transmits();
    assert_eq!(sent.iter().map(status).collect::<Vec<_>>(), [200, 200]);
    assert_eq!(header(&sent[1], "CSeq").as_deref(), Some("2 OPTIONS"));
    h.tcp(2, b"\r\n\r\n");
    assert!(h.transmits().is_empty(), "keep-alives are not answered");
    assert!(h.events().is_empty());
    // TCP: timer J is zero, the transactions are gone at once.
    h.advance(0);
    assert!(h.ep.poll_timeout().is_none());
}

#[test]
fn tcp_framing_error_answers_400_then_asks_to_close() {
    let mut h = Harness::new();
    let bad = tcp_options("z9hG4bKbad", 1).replace("Content-Length: 0", "Content-Length: -5");
    h.tcp(3, bad.as_bytes());
    let answer = h.one();
    assert_eq!(status(&answer), 400);
    assert_eq!(answer.transport, Transport::Tcp(ConnectionId(3)));
    assert_eq!(
        h.events(),
        vec![CallEvent::CloseConnection {
            conn: ConnectionId(3)
        }]
    );
    h.tcp(3, tcp_options("z9hG4bKafter", 2).as_bytes());
    assert!(
        h.transmits().is_empty(),
        "nothing is read after a framing error"
    );
    h.ep.connection_closed(ConnectionId(3));
    h.tcp(3, tcp_options("z9hG4bKnew", 3).as_bytes());
    assert_eq!(
        status(&h.one()),
        200,
        "a new connection with the same id starts clean"
    );
}

#[test]
fn tcp_close_ends_its_calls() {
    let mut h = Harness::new();
    let msg = invite("z9hG4bKtcpclose", "tcpclose@phone", "", SDP_OFFER)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    h.tcp(4, msg.as_bytes());
    h.transmits();
    let call = match h.events().as_slice() {
        [CallEvent::Incoming { call, .. }] => *call,
        other => panic!("{other:?}"),
    };
    h.ep.connection_closed(ConnectionId(4));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::TransportClosed
        }]
    );
    assert_eq!(h.ep.calls(), 0);
    assert!(h.ep.poll_timeout().is_none());
}

#[test]
fn call_end_labels_are_stable() {
    let labels: Vec<&str> = [
        CallEnd::RemoteBye,
        CallEnd::LocalBye,
        CallEnd::Cancelled,
        CallEnd::Rejected { code: 486 },
        CallEnd::AckTimeout,
        CallEnd::ByeTimeout,
        CallEnd::TransportClosed,
    ]
    .iter()
    .map(|e| e.as_str())
    .collect();
    assert_eq!(
        labels,
        [
            "remote_bye",
            "local_bye",
            "cancelled",
            "rejected",
            "ack_timeout",
            "bye_timeout",
            "transport_closed"
        ]
    );
    assert_eq!(
        CallEnd::Rejected { code: 603 }.to_string(),
        "rejected with 603"
    );
}

#[test]
fn late_invite_retransmission_does_not_create_a_second_call() {
    let mut h = Harness::new();
    established(&mut h, "late2@phone");
    assert!(
        h.advance(40_000).is_empty(),
        "timer L ends the INVITE transaction silently"
    );
    h.udp(&invite("z9hG4bKinv1", "late2@phone", "", SDP_OFFER));
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty());
    assert_eq!(h.ep.calls(), 1);
}

#[test]
fn trying_copies_the_timestamp() {
    let mut h = Harness::new();
    h.udp(&invite(
        "z9hG4bKts",
        "ts@phone",
        "Timestamp: 54.2 0.5\r\n",
        SDP_OFFER,
    ));
    let trying = h.one();
    assert_eq!(status(&trying), 100);
    assert_eq!(header(&trying, "Timestamp").as_deref(), Some("54.2 0.5"));
}

// ---------------------------------------------------------------- session timers (RFC 4028)

const TIMER: &str = "Supported: timer\r\nSession-Expires: 120\r\n";

/// A call that asked for a 120 s session timer, answered at 0 and ACKed.
fn timed_call(h: &mut Harness, call_id: &str) -> (CallId, String) {
    let call = offer(h, "z9hG4bKst1", call_id, TIMER);
    let now = h.now;
    h.ep.accept(call, SDP_ANSWER, now).expect("accept");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(
        header(&ok, "Session-Expires").as_deref(),
        Some("120;refresher=uac"),
        "the caller refreshes"
    );
    assert_eq!(header(&ok, "Require").as_deref(), Some("timer"));
    assert_eq!(header(&ok, "Supported").as_deref(), Some("timer"));
    let tag = to_tag(&ok).expect("To tag");
    h.udp(&ack("z9hG4bKsta", call_id, 1, &tag));
    assert!(matches!(
        h.events().as_slice(),
        [CallEvent::Established { .. }]
    ));
    (call, tag)
}

#[test]
fn session_timer_without_refresh_ends_the_call_with_bye() {
    let mut h = Harness::new();
    let (call, _) = timed_call(&mut h, "st1@phone");
    // 120 s − min(32, 40) = 88 s: nothing before, BYE then.
    assert!(h.advance(87_999).is_empty());
    assert!(h.events().is_empty());
    let sent = h.advance(88_000);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, 88_000);
    assert!(first_line(&sent[0].1).starts_with("BYE "));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::SessionExpired
        }]
    );
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn session_refresh_by_reinvite_keeps_the_call() {
    let mut h = Harness::new();
    let (call, tag) = timed_call(&mut h, "st2@phone");
    h.set(60_000);
    h.udp(&in_dialog(
        "INVITE",
        "z9hG4bKst2r",
        "st2@phone",
        2,
        &tag,
        TIMER,
        SDP_OFFER,
    ));
    assert_eq!(status(&h.one()), 100);
    assert!(matches!(h.events().as_slice(), [CallEvent::Reoffer { .. }]));
    let now = h.now;
    h.ep.answer_update(call, Ok(SDP_ANSWER), now)
        .expect("answer");
    let ok = h.one();
    assert_eq!(status(&ok), 200);
    assert_eq!(
        header(&ok, "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    h.udp(&ack("z9hG4bKst2a", "st2@phone", 2, &tag));
    // The first deadline (88 s) passed without effect; the refreshed one is 60 + 88 s.
    assert!(h.advance(147_999).is_empty());
    assert!(h.events().is_empty());
    let sent = h.advance(148_000);
    assert!(sent.iter().any(|(_, t)| first_line(t).starts_with("BYE ")));
    assert_eq!(
        h.events(),
        vec![CallEvent::Ended {
            call,
            end: CallEnd::SessionExpired
        }]
    );
}

#[test]
fn session_interval_below_min_se_gets_422() {
    let mut h = Harness::new();
    h.udp(&invite(
        "z9hG4bKst3",
        "st3@phone",
        "Supported: timer\r\nSession-Expires: 30\r\n",
        SDP_OFFER,
    ));
    let refusal = h.one();
    assert_eq!(status(&refusal), 422);
    assert_eq!(header(&refusal, "Min-SE").as_deref(), Some("90"));
    assert!(h.events().is_empty());
    assert_eq!(h.ep.calls(), 0);
}

#[test]
fn no_session_timer_unless_the_caller_supports_and_refreshes_it() {
    for (i, extra) in [
        "Session-Expires: 120\r\n",
        "Supported: timer\r\nSession-Expires: 120;refresher=uas\r\n",
        "Supported: timer\r\n",
    ]
    .iter()
    .enumerate()
    {
        let mut h = Harness::new();
        let call_id = format!("st4-{i}@phone");
        let call = offer(&mut h, "z9hG4bKst4", &call_id, extra);
        let now = h.now;
        h.ep.accept(call, SDP_ANSWER, now).expect("accept");
        let ok = h.one();
        assert_eq!(header(&ok, "Session-Expires"), None, "{extra}");
        let tag = to_tag(&ok).expect("To tag");
        h.udp(&ack("z9hG4bKst4a", &call_id, 1, &tag));
        h.events();
        assert!(h.advance(3_600_000).is_empty(), "{extra}");
        assert!(h.events().is_empty());
        assert_eq!(h.ep.calls(), 1);
    }
}

#[test]
fn require_timer_alone_is_accepted() {
    let mut h = Harness::new();
    let call = offer(
        &mut h,
        "z9hG4bKst5",
        "st5@phone",
        "Require: timer\r\nSession-Expires: 90\r\n",
    );
    let now = h.now;
    h.ep.accept(call, SDP_ANSWER, now).expect("accept");
    assert_eq!(
        header(&h.one(), "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
}

/// A call established by one endpoint goes on in another (a restarted process) from its
/// stored dialog: the phone's BYE matches it, and our hangup sends the BYE the first endpoint
/// would have sent (same Call-ID, tags, route set, next CSeq, to the phone).
#[test]
fn a_stored_dialog_goes_on_in_another_endpoint() {
    let mut h = Harness::new();
    let rr = "Record-Route: <sip:sbc1.example.net;lr>\r\n";
    let call = offer(&mut h, "z9hG4bKinv1", "moved@phone", rr);
    h.ep.accept(call, SDP_ANSWER, h.now).expect("accept");
    let tag = to_tag(&h.one()).expect("tag");
    assert_eq!(h.ep.dialog(call), None, "not established before its ACK");
    h.udp(&ack("z9hG4bKack1", "moved@phone", 1, &tag));
    h.events();
    let state = h.ep.dialog(call).expect("an established UDP call's dialog");
    assert_eq!(state.local_tag, tag);
    assert_eq!(state.remote_tag, "alice1");
    assert_eq!(state.peer, addr(PHONE));
    assert_eq!(state.route_set, ["sip:sbc1.example.net;lr"]);

    // The next process hangs up: the BYE the first one would have sent.
    let mut next = Harness::new();
    let restored = next.ep.restore(state.clone(), next.now);
    assert_eq!(next.ep.calls(), 1);
    assert!(next.events().is_empty(), "a restored call reports nothing");
    next.ep.hangup(restored, next.now).expect("hangup");
    let bye = next.one();
    assert!(udp_to_phone(&bye));
    assert_eq!(first_line(&bye), "BYE sip:alice@198.51.100.7:5060 SIP/2.0");
    assert_eq!(header(&bye, "Call-ID").as_deref(), Some("moved@phone"));
    assert_eq!(header(&bye, "CSeq").as_deref(), Some("1 BYE"));
    assert_eq!(
        header(&bye, "From"),
        Some(format!("<sip:+15550001111@192.0.2.10>;tag={tag}"))
    );
    assert_eq!(
        header(&bye, "To").as_deref(),
        Some("\"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1")
    );
    assert_eq!(headers(&bye, "Route"), ["<sip:sbc1.example.net;lr>"]);

    // Another: the phone hangs up; its BYE matches the restored dialog.
    let mut other = Harness::new();
    let restored = other.ep.restore(state, other.now);
    other.udp(&in_dialog(
        "BYE",
        "z9hG4bKbye2",
        "moved@phone",
        2,
        &tag,
        "",
        "",
    ));
    assert_eq!(status(&other.one()), 200);
    assert_eq!(
        other.events(),
        vec![CallEvent::Ended {
            call: restored,
            end: CallEnd::RemoteBye
        }]
    );
}
