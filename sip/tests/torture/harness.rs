//! Test harness shared by `tests/dialogs.rs` and `tests/torture.rs`: an endpoint on a virtual
//! clock, helpers to read what it sends, and the decoder for the RFC 4475 fixture notation.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use patchbay_sip::endpoint::{
    CallEvent, ConnectionId, Endpoint, EndpointConfig, Transmit, Transport,
};
use patchbay_sip::message::{self, Message, NameAddr};
use patchbay_sip::transport;

pub const LOCAL: &str = "192.0.2.10:5060";
pub const PHONE: &str = "198.51.100.7:5060";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// An endpoint driven on a virtual clock.
pub struct Harness {
    pub ep: Endpoint,
    pub t0: Instant,
    pub now: Instant,
    pub phone: SocketAddr,
}

impl Harness {
    pub fn new() -> Self {
        let mut config = EndpointConfig::new(addr(LOCAL));
        config.rng_seed = 7;
        config.user_agent = "patchbay-test".into();
        let t0 = Instant::now();
        Self {
            ep: Endpoint::new(config),
            t0,
            now: t0,
            phone: addr(PHONE),
        }
    }

    /// The virtual instant `ms` milliseconds after the start.
    pub fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Milliseconds since the start.
    pub fn ms(&self, t: Instant) -> u64 {
        (t - self.t0).as_millis() as u64
    }

    /// Moves the clock forward without firing timers (they fire in `advance`).
    pub fn set(&mut self, ms: u64) {
        self.now = self.at(ms);
    }

    pub fn udp(&mut self, text: &str) {
        let (now, phone) = (self.now, self.phone);
        self.ep.handle_datagram(now, phone, text.as_bytes());
    }

    pub fn udp_bytes(&mut self, bytes: &[u8]) {
        let (now, phone) = (self.now, self.phone);
        self.ep.handle_datagram(now, phone, bytes);
    }

    pub fn tcp(&mut self, conn: u64, bytes: &[u8]) {
        let (now, phone) = (self.now, self.phone);
        self.ep.handle_stream(now, ConnectionId(conn), phone, bytes);
    }

    pub fn transmits(&mut self) -> Vec<Transmit> {
        std::iter::from_fn(|| self.ep.poll_transmit()).collect()
    }

    pub fn events(&mut self) -> Vec<CallEvent> {
        std::iter::from_fn(|| self.ep.poll_event()).collect()
    }

    /// Exactly one transmit, checked to be well-formed SIP.
    pub fn one(&mut self) -> Transmit {
        let mut t = self.transmits();
        assert_eq!(t.len(), 1, "expected one transmit, got {}", describe(&t));
        let t = t.remove(0);
        wire(&t);
        t
    }

    /// Fires timers up to `ms` (inclusive), exactly at each deadline; returns what was sent
    /// with the instant (in ms since the start) it was sent.
    pub fn advance(&mut self, ms: u64) -> Vec<(u64, Transmit)> {
        let end = self.at(ms);
        let mut out = Vec::new();
        while let Some(deadline) = self.ep.poll_timeout() {
            if deadline > end {
                break;
            }
            let deadline = deadline.max(self.now);
            self.now = deadline;
            self.ep.handle_timeout(deadline);
            for t in self.transmits() {
                wire(&t);
                out.push((self.ms(deadline), t));
            }
        }
        self.now = end;
        out
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

pub fn describe(transmits: &[Transmit]) -> String {
    transmits
        .iter()
        .map(|t| first_line(t).to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

pub fn text(t: &Transmit) -> String {
    String::from_utf8_lossy(&t.bytes).into_owned()
}

pub fn first_line(t: &Transmit) -> String {
    text(t).lines().next().unwrap_or_default().to_string()
}

/// Parses what the endpoint sent with our parser and with `rsip` (an independent parser), and
/// checks the framing (Content-Length equals the body).
pub fn wire(t: &Transmit) -> Message {
    let (head, body) = transport::frame_datagram(&t.bytes)
        .expect("our output frames")
        .expect("not a keep-alive");
    let declared = message::content_length(&head.headers)
        .expect("Content-Length parses")
        .expect("Content-Length present");
    assert_eq!(declared, body.len(), "Content-Length matches the body");
    let end = t.bytes.len() - body.len();
    assert!(
        t.bytes[..end].ends_with(b"\r\n\r\n"),
        "head ends with CRLF CRLF"
    );
    if let Ok(text) = std::str::from_utf8(&t.bytes) {
        // rsip's URI grammar rejects valid URIs (escapes such as esc01's Contact, `/` in
        // parameter values), so the Request-URI of our requests (the peer's Contact) is checked
        // with our URI grammar and everything else by rsip.
        let checked = match text.split_once("\r\n") {
            Some((line, rest)) if !line.starts_with("SIP/") => {
                let mut parts = line.split(' ');
                let (method, uri) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                if let Err(e) = message::check_uri(uri) {
                    panic!("our request has an invalid Request-URI ({e}):\n{text}");
                }
                format!("{method} sip:checked@example.invalid SIP/2.0\r\n{rest}")
            }
            _ => text.to_string(),
        };
        if let Err(e) = rsip::SipMessage::try_from(checked.as_str()) {
            panic!("rsip cannot parse our output: {e}\n{text}");
        }
    }
    head.into_message(body)
}

/// The status code of a response transmit (panics on a request).
pub fn status(t: &Transmit) -> u16 {
    match wire(t) {
        Message::Response(r) => r.status.code,
        Message::Request(r) => panic!("expected a response, got {}", r.line.raw),
    }
}

/// Every value of a header field of a transmit.
pub fn headers(t: &Transmit, name: &str) -> Vec<String> {
    let headers = match wire(t) {
        Message::Response(r) => r.headers,
        Message::Request(r) => r.headers,
    };
    headers.get_all(name).map(str::to_string).collect()
}

pub fn header(t: &Transmit, name: &str) -> Option<String> {
    headers(t, name).into_iter().next()
}

pub fn body(t: &Transmit) -> String {
    match wire(t) {
        Message::Response(r) => String::from_utf8_lossy(&r.body).into_owned(),
        Message::Request(r) => String::from_utf8_lossy(&r.body).into_owned(),
    }
}

pub fn name_addr(t: &Transmit, name: &str) -> NameAddr {
    message::parse_name_addr(&header(t, name).expect("header present")).expect("name-addr")
}

pub fn to_tag(t: &Transmit) -> Option<String> {
    name_addr(t, "To").tag().map(str::to_string)
}

pub fn udp_to_phone(t: &Transmit) -> bool {
    t.transport == Transport::Udp && t.destination == addr(PHONE)
}

/// Decodes the RFC 4475 notation (§2): lines end with CRLF, `<allOneLine>` blocks are joined
/// without line breaks, `<hex>…</hex>` are raw bytes, `<repeat count=N>…</repeat>` repeats.
pub fn decode_fixture(source: &str) -> Vec<u8> {
    let mut lines: Vec<String> = Vec::new();
    let mut joined: Option<String> = None;
    let source = source.strip_suffix('\n').unwrap_or(source);
    for line in source.split('\n') {
        match (line.trim(), joined.as_mut()) {
            ("<allOneLine>", _) => joined = Some(String::new()),
            ("</allOneLine>", Some(_)) => lines.push(joined.take().unwrap_or_default()),
            (_, Some(buffer)) => buffer.push_str(line),
            (_, None) => lines.push(line.to_string()),
        }
    }
    let mut out = Vec::new();
    for line in lines {
        let mut rest = line.as_str();
        loop {
            let hex = rest.find("<hex>");
            let repeat = rest.find("<repeat count=");
            match (hex, repeat) {
                (Some(h), r) if r.is_none_or(|r| h < r) => {
                    out.extend_from_slice(&rest.as_bytes()[..h]);
                    let after = &rest[h + 5..];
                    let end = after.find("</hex>").expect("closing </hex>");
                    let digits = &after[..end];
                    for i in (0..digits.len()).step_by(2) {
                        out.push(u8::from_str_radix(&digits[i..i + 2], 16).expect("hex digits"));
                    }
                    rest = &after[end + 6..];
                }
                (_, Some(r)) => {
                    out.extend_from_slice(&rest.as_bytes()[..r]);
                    let after = &rest[r + 14..];
                    let close = after.find('>').expect("repeat count");
                    let count: usize = after[..close].parse().expect("count");
                    let inner = &after[close + 1..];
                    let end = inner.find("</repeat>").expect("closing </repeat>");
                    out.extend_from_slice(inner[..end].repeat(count).as_bytes());
                    rest = &inner[end + 9..];
                }
                _ => {
                    out.extend_from_slice(rest.as_bytes());
                    break;
                }
            }
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub const SDP_OFFER: &str = "v=0\r\no=phone 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
pub const SDP_ANSWER: &str = "v=0\r\no=patchbay 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

/// An initial INVITE from the phone.
pub fn invite(branch: &str, call_id: &str, extra: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:+15550001111@192.0.2.10 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\n\
         To: <sip:+15550001111@192.0.2.10>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@198.51.100.7:5060>\r\n\
         {extra}\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// A request inside the dialog of `invite(…, call_id, …)` once we tagged it with `to_tag`.
pub fn in_dialog(
    method: &str,
    branch: &str,
    call_id: &str,
    cseq: u32,
    to_tag: &str,
    extra: &str,
    body: &str,
) -> String {
    let content_type = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_string()
    };
    format!(
        "{method} sip:{LOCAL} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 198.51.100.7:5060;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:+15557654321@198.51.100.7>;tag=alice1\r\n\
         To: <sip:+15550001111@192.0.2.10>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         {extra}{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The ACK for a 2xx (new branch, CSeq of the INVITE).
pub fn ack(branch: &str, call_id: &str, cseq: u32, to_tag: &str) -> String {
    in_dialog("ACK", branch, call_id, cseq, to_tag, "", "")
}
