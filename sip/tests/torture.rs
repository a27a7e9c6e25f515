//! RFC 4475 ("SIP Torture Test Messages"): all 49 messages, transcribed in the RFC's own
//! notation (§2: `<allOneLine>`, `<hex>`, `<repeat>`) under `tests/torture/*.msg` and decoded by
//! the harness, each sent to the endpoint as a UDP datagram from the phone's address. For each
//! the test asserts what RFC 4475 says an element should do, as far as a UAS-only endpoint
//! goes: valid requests are processed (an INVITE gets 100 Trying and an `Incoming` event, an
//! OPTIONS 200, a method we do not serve 405/501), invalid ones get the 4xx the RFC names (with
//! a reason phrase saying what is wrong), and responses, which a UAS cannot answer, are dropped.
//!
//! Where RFC 4475 leaves a choice, the case says which one we made:
//! - `wsinv` is well formed but carries a To tag, so it is a re-INVITE for a dialog this
//!   endpoint does not have: 481 (RFC 3261 §12.2.2). `wsinv_without_its_to_tag_is_a_new_call`
//!   shows the same tortuous message processed as a new call.
//! - `baddate` (non-GMT Date): accepted, we do not use Date (the RFC's liberal option).
//! - `badbranch` (branch `z9hG4bK` alone): treated as an RFC 2543 transaction id (the RFC's
//!   second option), so the OPTIONS gets 200.
//! - `zeromf` (OPTIONS, Max-Forwards 0): answered 200 as its final recipient (RFC 3261 §16.3).
//! - `escruri`, `lwsruri`, `lwsstart`, `trws`, `ltgtruri`, `badaspec`, `regbadct`, `quotbal`,
//!   `baddn`: the RFC allows liberal acceptance; we reject with 400.
//! - `scalar02`: 400 for the CSeq out of range (checked before Max-Forwards and Expires).
//! - `mismatch02`: 501 (the RFC's preferred answer) rather than 400.
//! - Requests for methods we do not serve (REGISTER, MESSAGE) get 405 before their semantics
//!   are looked at, so `unksm2`, `regaut01`, `cparam01/02`, `regescrt`, `escnull`, `mpart01`
//!   and `dblreq` show the parser accepted them (a malformed one would get 400).
#![allow(clippy::disallowed_methods)] // tests start their virtual clock at the real time

#[path = "torture/harness.rs"]
mod harness;

use std::path::PathBuf;

use harness::*;
use patchbay_sip::endpoint::{CallEvent, ConnectionId, SipError, Transport};
use patchbay_sip::message::{self, Message};
use patchbay_sip::transport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 100 Trying and one `Incoming` event.
    Incoming,
    /// Exactly one response with this code and, if not empty, this text in its status line.
    Status(u16, &'static str),
    /// Nothing sent, nothing reported.
    Dropped,
}

use Expect::*;

struct Case {
    name: &'static str,
    section: &'static str,
    /// RFC 4475 calls the message valid (3.1.1, 3.2, 3.3 except where noted, 3.4).
    valid: bool,
    expect: Expect,
}

const fn case(name: &'static str, section: &'static str, valid: bool, expect: Expect) -> Case {
    Case {
        name,
        section,
        valid,
        expect,
    }
}

const CASES: &[Case] = &[
    // 3.1.1 Valid messages.
    case("wsinv", "3.1.1.1", true, Status(481, "")),
    case("intmeth", "3.1.1.2", true, Status(501, "")),
    case("esc01", "3.1.1.3", true, Incoming),
    case("escnull", "3.1.1.4", true, Status(405, "")),
    case("esc02", "3.1.1.5", true, Status(501, "")),
    case("lwsdisp", "3.1.1.6", true, Status(200, "")),
    case("longreq", "3.1.1.7", true, Incoming),
    case("dblreq", "3.1.1.8", true, Status(405, "")),
    case("semiuri", "3.1.1.9", true, Status(200, "")),
    case("transports", "3.1.1.10", true, Status(200, "")),
    case("mpart01", "3.1.1.11", true, Status(405, "")),
    case("unreason", "3.1.1.12", true, Dropped),
    case("noreason", "3.1.1.13", true, Dropped),
    // 3.1.2 Invalid messages.
    case(
        "badinv01",
        "3.1.2.1",
        false,
        Status(400, "Malformed Via header: empty parameter"),
    ),
    case(
        "clerr",
        "3.1.2.2",
        false,
        Status(
            400,
            "Content-Length 9999 exceeds the 154 body bytes received",
        ),
    ),
    case(
        "ncl",
        "3.1.2.3",
        false,
        Status(400, "Malformed Content-Length header"),
    ),
    case(
        "scalar02",
        "3.1.2.4",
        false,
        Status(400, "Malformed CSeq header: sequence number out of range"),
    ),
    case("scalarlg", "3.1.2.5", false, Dropped),
    case(
        "quotbal",
        "3.1.2.6",
        false,
        Status(400, "Malformed To header: unterminated quoted string"),
    ),
    case(
        "ltgtruri",
        "3.1.2.7",
        false,
        Status(400, "Malformed Request-URI: missing scheme"),
    ),
    case(
        "lwsruri",
        "3.1.2.8",
        false,
        Status(400, "Malformed request line"),
    ),
    case(
        "lwsstart",
        "3.1.2.9",
        false,
        Status(400, "Malformed request line"),
    ),
    case(
        "trws",
        "3.1.2.10",
        false,
        Status(400, "Malformed request line"),
    ),
    case(
        "escruri",
        "3.1.2.11",
        false,
        Status(400, "Malformed Request-URI: headers are not allowed"),
    ),
    case("baddate", "3.1.2.12", false, Incoming),
    case(
        "regbadct",
        "3.1.2.13",
        false,
        Status(400, "Malformed Contact header"),
    ),
    case(
        "badaspec",
        "3.1.2.14",
        false,
        Status(400, "Malformed To header: whitespace inside the URI"),
    ),
    case(
        "baddn",
        "3.1.2.15",
        false,
        Status(400, "Malformed From header: display name"),
    ),
    case("badvers", "3.1.2.16", false, Status(505, "")),
    case(
        "mismatch01",
        "3.1.2.17",
        false,
        Status(400, "CSeq method does not match the request method"),
    ),
    case("mismatch02", "3.1.2.18", false, Status(501, "")),
    case("bigcode", "3.1.2.19", false, Dropped),
    // 3.2 Transaction layer semantics.
    case("badbranch", "3.2.1", true, Status(200, "")),
    // 3.3 Application-layer semantics.
    case(
        "insuf",
        "3.3.1",
        false,
        Status(400, "Missing Call-ID header"),
    ),
    case("unkscm", "3.3.2", true, Status(416, "")),
    case("novelsc", "3.3.3", true, Status(416, "")),
    case("unksm2", "3.3.4", true, Status(405, "")),
    case("bext01", "3.3.5", true, Status(420, "")),
    case("invut", "3.3.6", true, Status(415, "")),
    case("regaut01", "3.3.7", true, Status(405, "")),
    case(
        "multi01",
        "3.3.8",
        false,
        Status(400, "More than one CSeq header"),
    ),
    case(
        "mcl01",
        "3.3.9",
        false,
        Status(400, "Conflicting Content-Length headers"),
    ),
    case("bcast", "3.3.10", true, Dropped),
    case("zeromf", "3.3.11", true, Status(200, "")),
    case("cparam01", "3.3.12", true, Status(405, "")),
    case("cparam02", "3.3.13", true, Status(405, "")),
    case("regescrt", "3.3.14", true, Status(405, "")),
    case("sdp01", "3.3.15", true, Status(406, "")),
    // 3.4 Backward compatibility.
    case("inv2543", "3.4.1", true, Incoming),
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/torture")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(format!("{name}.msg"));
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    decode_fixture(&source)
}

/// Feeds one message and checks the outcome; returns a description of any mismatch.
fn run(h: &mut Harness, bytes: &[u8], expect: Expect) -> Result<(), String> {
    h.udp_bytes(bytes);
    let sent = h.transmits();
    let events = h.events();
    match expect {
        Incoming => {
            let ok = sent.len() == 1
                && status(&sent[0]) == 100
                && matches!(events.as_slice(), [CallEvent::Incoming { .. }]);
            if !ok {
                return Err(format!(
                    "expected 100 + Incoming, got [{}] {events:?}",
                    describe(&sent)
                ));
            }
        }
        Status(code, reason) => {
            if sent.len() != 1 || !events.is_empty() {
                return Err(format!(
                    "expected one {code}, got [{}] {events:?}",
                    describe(&sent)
                ));
            }
            let t = &sent[0];
            if status(t) != code || !first_line(t).contains(reason) {
                return Err(format!(
                    "expected {code} {reason:?}, got {:?}",
                    first_line(t)
                ));
            }
            if !udp_to_phone(t) {
                return Err("response not sent back to the source".into());
            }
        }
        Dropped => {
            if !sent.is_empty() || !events.is_empty() {
                return Err(format!(
                    "expected nothing, got [{}] {events:?}",
                    describe(&sent)
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn all_49_fixtures_are_present_and_consistent() {
    assert_eq!(CASES.len(), 49);
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".msg").map(str::to_string))
        .collect();
    on_disk.sort();
    let mut named: Vec<String> = CASES.iter().map(|c| c.name.to_string()).collect();
    named.sort();
    assert_eq!(on_disk, named);
    // Transcription check: every message whose framing RFC 4475 does not question has a body
    // of exactly Content-Length bytes.
    for case in CASES {
        if matches!(case.name, "clerr" | "ncl" | "mcl01" | "dblreq" | "inv2543") {
            continue;
        }
        let bytes = fixture(case.name);
        let (head_len, body_start) = message::find_head_end(&bytes).expect("head end");
        let head = message::parse_head(&bytes[..head_len]);
        let Ok(head) = head else {
            assert!(!case.valid, "{}: valid message does not lex", case.name);
            continue;
        };
        if let Ok(Some(declared)) = message::content_length(&head.headers) {
            assert_eq!(
                declared,
                bytes.len() - body_start,
                "{} body length",
                case.name
            );
        }
    }
}

#[test]
fn every_torture_message_gets_the_answer_rfc_4475_asks_for() {
    let mut failures = Vec::new();
    for case in CASES {
        let mut h = Harness::new();
        if let Err(problem) = run(&mut h, &fixture(case.name), case.expect) {
            failures.push(format!("{} ({}): {problem}", case.name, case.section));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn responses_to_torture_requests_copy_every_via() {
    for case in CASES {
        let bytes = fixture(case.name);
        let Ok(Some((head, body))) = transport::frame_datagram(&bytes) else {
            continue;
        };
        let Message::Request(request) = head.into_message(body) else {
            continue;
        };
        let Ok(vias) = message::parse_vias(&request.headers) else {
            continue;
        };
        let mut h = Harness::new();
        h.udp_bytes(&bytes);
        for t in h.transmits() {
            let copied = headers(&t, "Via");
            assert_eq!(copied.len(), vias.len(), "{}", case.name);
            for (i, (got, sent)) in copied.iter().zip(&vias).enumerate().skip(1) {
                assert_eq!(got, &sent.raw, "{} via {i}", case.name);
            }
        }
    }
}

#[test]
fn wsinv_parses_as_rfc_4475_describes() {
    let bytes = fixture("wsinv");
    let (head, body) = transport::frame_datagram(&bytes)
        .expect("frames")
        .expect("message");
    let Message::Request(request) = head.into_message(body) else {
        panic!("request");
    };
    let fields = message::check_request(&request).expect("well formed");
    assert_eq!(
        request.line.uri,
        "sip:vivekg@chair-dnrc.example.com;unknownparam"
    );
    assert_eq!(fields.to.uri, "sip:vivekg@chair-dnrc.example.com");
    assert_eq!(fields.to.tag(), Some("1918181833n"));
    assert_eq!(fields.from.tag(), Some("98asjd8"));
    assert_eq!(
        fields.from.display_name.as_deref(),
        Some(r#""J Rosenberg \\\"""#)
    );
    assert_eq!(fields.max_forwards, Some(68));
    assert_eq!(fields.cseq.seq, 9);
    assert_eq!(fields.call_id, "wsinv.ndaksdj@192.0.2.1");
    let hosts: Vec<&str> = fields.vias.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(
        hosts,
        ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    );
    assert_eq!(fields.vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(fields.vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(fields.contacts.len(), 1);
    assert_eq!(fields.contacts[0].param("q"), Some(Some("0.33")));
    assert_eq!(fields.contacts[0].param("secondparam"), Some(None));
    assert_eq!(request.headers.get("Subject"), Some(""));
    assert_eq!(
        request.headers.get("NewFangledHeader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        request.headers.get("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    assert_eq!(request.body.len(), 150);
}

#[test]
fn wsinv_without_its_to_tag_is_a_new_call() {
    let text = String::from_utf8(fixture("wsinv")).expect("utf-8");
    let untagged = text.replace(" ;   tag    = 1918181833n", "");
    assert_ne!(untagged, text);
    let mut h = Harness::new();
    run(&mut h, untagged.as_bytes(), Incoming).expect("processed as a new call");
}

#[test]
fn intmeth_is_answered_501_with_allow() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("intmeth"));
    let answer = h.one();
    assert_eq!(status(&answer), 501);
    assert_eq!(
        header(&answer, "Allow").as_deref(),
        Some("INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")
    );
    assert_eq!(
        header(&answer, "CSeq").as_deref(),
        Some("139122385 !interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(
        header(&answer, "Call-ID").as_deref(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
}

#[test]
fn esc02_fake_contact_is_an_extension_header() {
    let bytes = fixture("esc02");
    let (head, _) = transport::frame_datagram(&bytes)
        .expect("frames")
        .expect("message");
    assert_eq!(head.headers.get_all("Contact").count(), 2);
    assert_eq!(
        head.headers.get("C%6Fntact"),
        Some("<sip:alias2@host2.example.com>")
    );
}

#[test]
fn longreq_answer_carries_all_34_vias_in_order() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("longreq"));
    let trying = h.one();
    let vias = headers(&trying, "Via");
    assert_eq!(vias.len(), 34);
    assert_eq!(
        vias[0],
        "SIP/2.0/TCP sip33.example.com;received=198.51.100.7"
    );
    assert_eq!(vias[32], "SIP/2.0/TCP sip1.example.com");
    assert!(vias[33].starts_with("SIP/2.0/TCP host.example.com;received=192.0.2.5;branch=verylong"));
}

#[test]
fn dblreq_trailing_invite_is_ignored_on_udp_but_not_on_tcp() {
    let bytes = fixture("dblreq");
    let mut h = Harness::new();
    h.udp_bytes(&bytes);
    assert_eq!(status(&h.one()), 405);
    assert!(h.events().is_empty());
    // On a stream the same octets are two messages: the INVITE is a real call.
    let mut h = Harness::new();
    h.tcp(1, &bytes);
    let sent = h.transmits();
    assert_eq!(sent.iter().map(status).collect::<Vec<_>>(), [405, 100]);
    assert!(matches!(
        h.events().as_slice(),
        [CallEvent::Incoming { .. }]
    ));
}

#[test]
fn clerr_on_tcp_waits_for_the_rest_of_the_body() {
    let mut h = Harness::new();
    h.tcp(1, &fixture("clerr"));
    assert!(
        h.transmits().is_empty(),
        "RFC 4475 §3.1.2.2: a stream waits for more data"
    );
    assert!(h.events().is_empty());
}

#[test]
fn ncl_and_mcl01_on_tcp_close_the_connection() {
    for name in ["ncl", "mcl01"] {
        let mut h = Harness::new();
        h.tcp(5, &fixture(name));
        let answer = h.one();
        assert_eq!(status(&answer), 400, "{name}");
        assert_eq!(answer.transport, Transport::Tcp(ConnectionId(5)));
        assert_eq!(
            h.events(),
            vec![CallEvent::CloseConnection {
                conn: ConnectionId(5)
            }],
            "{name}"
        );
    }
}

#[test]
fn inv2543_is_accepted_without_branch_tags_or_content_length() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("inv2543"));
    let trying = h.one();
    assert_eq!(status(&trying), 100);
    let call = match h.events().as_slice() {
        [CallEvent::Incoming {
            call,
            sdp_offer: Some(sdp),
            ..
        }] => {
            assert!(
                sdp.ends_with("m=audio 49217 RTP/AVP 0\r\n"),
                "body is the rest of the datagram"
            );
            *call
        }
        other => panic!("{other:?}"),
    };
    // Its retransmission (same RFC 2543 transaction id) is answered by the transaction.
    h.udp_bytes(&fixture("inv2543"));
    assert_eq!(status(&h.one()), 100);
    assert!(h.events().is_empty());
    // Accepted, the 200 copies the Record-Route; hanging up after the ACK targets the From URI
    // (there is no Contact) through the strict router of the route set.
    h.ep.accept(call, SDP_ANSWER, h.now).expect("accept");
    let ok = h.one();
    assert_eq!(
        header(&ok, "Record-Route").as_deref(),
        Some("<sip:UserB@example.com;maddr=ss1.example.com>")
    );
    let tag = to_tag(&ok).expect("our tag");
    h.udp(&format!("ACK sip:{LOCAL} SIP/2.0\r\nVia: SIP/2.0/UDP iftgw.example.com\r\nFrom: <sip:+13035551111@ift.client.example.net;user=phone>\r\nTo: sip:+16505552222@ss1.example.net;user=phone;tag={tag}\r\nCall-ID: inv2543.1717@ift.client.example.com\r\nCSeq: 56 ACK\r\n\r\n"));
    assert!(matches!(
        h.events().as_slice(),
        [CallEvent::Established { .. }]
    ));
    h.ep.hangup(call, h.now).expect("hangup");
    let bye = h.one();
    assert_eq!(
        first_line(&bye),
        "BYE sip:UserB@example.com;maddr=ss1.example.com SIP/2.0"
    );
    assert_eq!(
        headers(&bye, "Route"),
        ["<sip:+13035551111@ift.client.example.net;user=phone>"]
    );
    assert_eq!(
        header(&bye, "To").as_deref(),
        Some("<sip:+13035551111@ift.client.example.net;user=phone>")
    );
}

#[test]
fn bext01_lists_the_required_extensions_as_unsupported() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("bext01"));
    let answer = h.one();
    assert_eq!(status(&answer), 420);
    assert_eq!(
        header(&answer, "Unsupported").as_deref(),
        Some("nothingSupportsThis, nothingSupportsThisEither")
    );
}

#[test]
fn invut_gets_415_with_accept() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("invut"));
    let answer = h.one();
    assert_eq!(status(&answer), 415);
    assert_eq!(
        header(&answer, "Accept").as_deref(),
        Some("application/sdp")
    );
}

#[test]
fn insuf_answer_has_what_the_request_had() {
    let mut h = Harness::new();
    h.udp_bytes(&fixture("insuf"));
    let answer = h.one();
    assert_eq!(status(&answer), 400);
    assert_eq!(header(&answer, "CSeq").as_deref(), Some("193942 INVITE"));
    assert_eq!(header(&answer, "Call-ID"), None);
}

#[test]
fn unreason_status_line_keeps_its_utf8_reason() {
    let bytes = fixture("unreason");
    let (head, _) = transport::frame_datagram(&bytes)
        .expect("frames")
        .expect("message");
    match head.start {
        message::StartLine::Response(status) => {
            assert_eq!(status.code, 200);
            assert!(status
                .reason
                .starts_with("= 2**3 * 5**2 но сто девяносто девять"));
        }
        message::StartLine::Request(_) => panic!("response"),
    }
    let mut h = Harness::new();
    h.udp_bytes(&bytes);
    assert_eq!(h.ep.stats().stray_responses, 1);
}

// ---------------------------------------------------------------------------------------------
// Random and mutated input: nothing panics, and whatever is sent is well-formed SIP (checked by
// our parser and by rsip in `harness::wire`): a response, or a BYE for a call we answered.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                let junk: Vec<u8> = (0..=rng.below(8)).map(|_| rng.next() as u8).collect();
                out.splice(i..i, junk);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(64)).min(len);
                out.drain(i..j);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let j = (i + rng.below(128)).min(len);
                let copy = out[i..j].to_vec();
                let k = rng.below(len + 1);
                out.splice(k..k, copy);
            }
            5 => out.truncate(rng.below(len + 1)),
            6 => {
                let i = rng.below(len + 1);
                let token: &[u8] = [
                    &b"\r\n"[..],
                    b"\r\n\r\n",
                    b" ",
                    b";",
                    b",",
                    b"\"",
                    b"<",
                    b"99999999999999999999",
                    b"Content-Length: 70000\r\n",
                    b"To: <sip:x@y>;tag=zz\r\n",
                    b"\r\n ",
                ][rng.below(11)];
                out.splice(i..i, token.iter().copied());
            }
            7 => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&out).into_owned();
                let mut lines: Vec<&str> = text.split("\r\n").collect();
                if lines.len() > 2 {
                    let a = rng.below(lines.len());
                    let b = rng.below(lines.len());
                    lines.swap(a, b);
                }
                out = lines.join("\r\n").into_bytes();
            }
            _ => {}
        }
    }
    out
}

/// Deciding a call reported `Incoming` succeeds unless the same input already ended it (for
/// example a CANCEL behind the INVITE in one TCP chunk).
fn offered_or_ended(result: Result<(), SipError>) {
    if let Err(e) = result {
        assert!(matches!(e, SipError::UnknownCall(_)), "{e}");
    }
}

fn check_output(h: &mut Harness, answered: bool) {
    for t in h.transmits() {
        match wire(&t) {
            Message::Response(_) => {}
            Message::Request(r) => assert!(
                answered && r.line.method == message::Method::Bye,
                "unexpected request {}",
                r.line.raw
            ),
        }
    }
}

#[test]
fn random_and_mutated_input_never_panics_and_only_yields_sip() {
    let mut corpus: Vec<Vec<u8>> = CASES.iter().map(|c| fixture(c.name)).collect();
    for i in 0..4 {
        corpus.push(
            invite(
                &format!("z9hG4bKfz{i}"),
                &format!("fz{i}@phone"),
                "",
                SDP_OFFER,
            )
            .into_bytes(),
        );
    }
    corpus.push(
        in_dialog(
            "BYE",
            "z9hG4bKfzbye",
            "fz0@phone",
            2,
            "0000000000000000",
            "",
            "",
        )
        .into_bytes(),
    );
    corpus.push(ack("z9hG4bKfzack", "fz0@phone", 1, "0000000000000000").into_bytes());

    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut h = Harness::new();
    let mut answered = false;
    let mut clock = 0u64;
    let mut offered = Vec::new();
    for round in 0..6_000 {
        let bytes = match rng.below(10) {
            0 => (0..rng.below(400)).map(|_| rng.next() as u8).collect(),
            _ => {
                let base = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &base)
            }
        };
        if rng.below(3) == 0 {
            let conn = rng.below(4) as u64;
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len());
                let (chunk, tail) = rest.split_at(n);
                h.tcp(conn, chunk);
                rest = tail;
            }
        } else {
            h.udp_bytes(&bytes);
        }
        check_output(&mut h, answered);
        for event in h.events() {
            match event {
                CallEvent::Incoming { call, .. } => {
                    offered.push(call);
                    let now = h.now;
                    match rng.below(3) {
                        0 => {
                            answered = true;
                            offered_or_ended(h.ep.accept(call, SDP_ANSWER, now));
                        }
                        1 => offered_or_ended(h.ep.reject(call, 486, "Busy", now)),
                        _ => {}
                    }
                }
                CallEvent::CloseConnection { conn } => h.ep.connection_closed(conn),
                _ => {}
            }
        }
        check_output(&mut h, answered);
        if round % 7 == 0 {
            clock += rng.below(5_000) as u64;
            for (_, t) in h.advance(clock) {
                if let Message::Request(r) = wire(&t) {
                    assert_eq!(r.line.method, message::Method::Bye);
                }
            }
        }
    }
    // Nothing leaks: once every call is decided and time passes, all state is gone.
    let now = h.now;
    for call in offered {
        if h.ep.reject(call, 480, "", now).is_err() {
            let _ = h.ep.hangup(call, now);
        }
    }
    check_output(&mut h, answered);
    h.advance(clock + 600_000);
    for event in h.events() {
        if let CallEvent::CloseConnection { conn } = event {
            h.ep.connection_closed(conn);
        }
    }
    h.advance(clock + 700_000);
    assert_eq!(h.ep.calls(), 0);
    assert_eq!(h.ep.poll_timeout(), None);
}
