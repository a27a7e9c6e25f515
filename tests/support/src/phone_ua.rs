//! A minimal phone for tests and examples: a SIP user agent client over UDP that dials
//! patchbay with a participant token in `User-To-User` (the form Bandwidth's transfer helper
//! sends), answers the server's BYE, sends a G.711 µ-law tone as RTP and keeps what it hears,
//! decoded, and the RFC 4733 keys it receives (once per event, as a phone counts them). It can
//! press keys, re-INVITE (hold, resume) and go silent without hanging up (a dead leg). It keeps
//! the methods of the requests the server sends it (a transfer must bring no BYE and no
//! INVITE). Used by `tests/sip` and `examples/phone.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use patchbay_sip::g711::G711Law;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The transfer helper's correlation element (a Voice call id without dashes).
pub const CALL_ID_HEX: &str = "93d6f3c0be5845960b744fa28015d8ede84bd1a4";

/// How the INVITE presents itself.
#[derive(Debug, Clone)]
pub struct Dial {
    /// The whole `User-To-User` value, or none at all.
    pub user_to_user: Option<String>,
    /// The `m=audio` formats and their attribute lines.
    pub formats: &'static str,
    /// The attribute lines of those formats.
    pub attributes: &'static str,
}

impl Dial {
    /// As Bandwidth's transfer helper: `<hex>;encoding=base64,<JWT>;encoding=jwt`, PCMU/PCMA
    /// and telephone-event.
    pub fn with_token(token: &str) -> Dial {
        Dial {
            user_to_user: Some(format!("{CALL_ID_HEX};encoding=base64,{token};encoding=jwt")),
            formats: "0 8 101",
            attributes: "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n",
        }
    }
}

/// A final error response to the INVITE.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The status code.
    pub code: u16,
    /// The `Reason` header, if any.
    pub reason: Option<String>,
    /// With a 3xx: where to dial instead (the `Contact` URI's `host:port`).
    pub redirect: Option<SocketAddr>,
}

/// A call that was answered.
pub struct Phone {
    sip: Arc<UdpSocket>,
    /// Where the dialog's requests go: the 2xx's Contact (the server that answered).
    server: SocketAddr,
    /// Where the INVITE was sent (another server, when that one proxied it).
    dialled: SocketAddr,
    call_id: String,
    from_tag: String,
    to_header: String,
    cseq: AtomicU32,
    rtp: Arc<UdpSocket>,
    /// Where the server wants RTP.
    pub remote_rtp: SocketAddr,
    heard: Arc<Mutex<Vec<i16>>>,
    /// RFC 4733 digits received: one per event (its timestamp), at its first end packet,
    /// with the duration that packet announced (8 kHz samples).
    digits_heard: Arc<Mutex<Vec<(char, u16)>>>,
    bye_received: Arc<AtomicBool>,
    /// Whether the server's BYE is answered (else it is kept unanswered, and retransmitted).
    answers_bye: Arc<AtomicBool>,
    /// The methods of the requests the server sent, in order of arrival.
    requests_received: Arc<Mutex<Vec<String>>>,
    /// Responses to our in-dialog requests (re-INVITE, BYE), as received.
    responses: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
    /// Digits to send as RFC 4733 events (payload type 101) in place of the tone.
    digits: Arc<Mutex<std::collections::VecDeque<char>>>,
    tone: Mutex<Option<JoinHandle<()>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Phone {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut tone) = self.tone.lock() {
            if let Some(t) = tone.take() {
                t.abort();
            }
        }
    }
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn body(message: &str) -> &str {
    message.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The `host:port` of a response's Contact URI, when it is an address.
fn contact_addr(response: &str) -> Option<SocketAddr> {
    header(response, "Contact")
        .or_else(|| header(response, "m"))
        .and_then(|c| c.trim_start_matches('<').strip_prefix("sip:"))
        .and_then(|c| c.split(['>', ';']).next())
        .and_then(|c| c.rsplit('@').next())
        .and_then(|c| c.parse().ok())
}

fn status(message: &str) -> Option<u16> {
    message.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Dials `server` and waits for the final answer.
pub async fn dial(server: SocketAddr, how: &Dial) -> Result<Phone, Refused> {
    let sip = Arc::new(
        UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind a SIP socket"),
    );
    let rtp = Arc::new(
        UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind an RTP socket"),
    );
    let local = sip.local_addr().expect("local address");
    let rtp_port = rtp.local_addr().expect("local address").port();
    let call_id = format!("{}@test-phone", random_token());
    let from_tag = random_token();
    let branch = format!("z9hG4bK{}", random_token());
    let sdp = format!(
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {}\r\n{}",
        how.formats, how.attributes
    );
    let uui = how
        .user_to_user
        .as_ref()
        .map(|v| format!("User-To-User: {v}\r\n"))
        .unwrap_or_default();
    let invite = format!(
        "INVITE sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+15551230000@voice.example>;tag={from_tag}\r\n\
         To: <sip:sipx.webrtc.bandwidth.com:5060>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:phone@{local}>\r\n\
         {uui}Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let mut buf = vec![0u8; 65_535];
    let mut attempts = 0;
    let response = loop {
        if attempts % 4 == 0 {
            sip.send_to(invite.as_bytes(), server)
                .await
                .expect("send INVITE");
        }
        attempts += 1;
        assert!(attempts < 80, "no final answer to the INVITE");
        let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(250), sip.recv_from(&mut buf)).await
        else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        match status(&text) {
            Some(code) if code >= 200 => break text,
            _ => continue,
        }
    };
    let code = status(&response).unwrap_or(0);
    let to_header = header(&response, "To")
        .or_else(|| header(&response, "t"))
        .unwrap_or("")
        .to_owned();
    let ack = |cseq_method: &str| {
        format!(
            "ACK sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15551230000@voice.example>;tag={from_tag}\r\n\
             To: {to_header}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 {cseq_method}\r\n\
             Content-Length: 0\r\n\r\n",
            if code >= 300 {
                branch.clone()
            } else {
                format!("z9hG4bK{}", random_token())
            }
        )
    };
    // The ACK of a refusal belongs to the INVITE's transaction (where the INVITE went); the
    // ACK of a 2xx and every later request of the dialog go to the 2xx's Contact (RFC 3261
    // §12.1.2: the remote target), which is not where the INVITE went when it was proxied.
    let contact = contact_addr(&response);
    let target = if code >= 300 {
        server
    } else {
        contact.unwrap_or(server)
    };
    sip.send_to(ack("ACK").as_bytes(), target)
        .await
        .expect("send ACK");
    if code >= 300 {
        return Err(Refused {
            code,
            reason: header(&response, "Reason").map(str::to_owned),
            redirect: contact,
        });
    }
    let answer = body(&response);
    let port: u16 = answer
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port in the answer");
    let ip = answer
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .map(str::trim)
        .unwrap_or("127.0.0.1");
    let remote_rtp: SocketAddr = format!("{ip}:{port}").parse().expect("RTP address");

    let heard = Arc::new(Mutex::new(Vec::new()));
    let digits_heard = Arc::new(Mutex::new(Vec::new()));
    let bye_received = Arc::new(AtomicBool::new(false));
    let requests_received = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    {
        let (rtp, heard, digits) = (rtp.clone(), heard.clone(), digits_heard.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut last_event: Option<u32> = None;
            while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                let p = &buf[..n];
                // Telephone events (payload type 101 in the offer), as a phone counts them.
                if n >= 16 && p[1] & 0x7f == 101 && p[13] & 0x80 != 0 {
                    let timestamp = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                    let digit = "0123456789*#".chars().nth(usize::from(p[12]));
                    if let (Some(digit), true) = (digit, last_event != Some(timestamp)) {
                        last_event = Some(timestamp);
                        let duration = u16::from_be_bytes([p[14], p[15]]);
                        if let Ok(mut d) = digits.lock() {
                            d.push((digit, duration));
                        }
                    }
                    continue;
                }
                // PCMU only (what a tone-reading test offers first); RFC 4733 events ignored.
                if n > 12 && p[1] & 0x7f == 0 {
                    let pcm: Vec<i16> = p[12..]
                        .iter()
                        .map(|&b| G711Law::MuLaw.decode_sample(b))
                        .collect();
                    if let Ok(mut h) = heard.lock() {
                        h.extend_from_slice(&pcm);
                    }
                }
            }
        }));
    }
    let (responses_tx, responses) = tokio::sync::mpsc::unbounded_channel();
    let answers_bye = Arc::new(AtomicBool::new(true));
    {
        let (sip, bye_received, requests, answers) = (
            sip.clone(),
            bye_received.clone(),
            requests_received.clone(),
            answers_bye.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            while let Ok((n, from)) = sip.recv_from(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text.starts_with("SIP/2.0 ") {
                    let _ = responses_tx.send(text);
                    continue;
                }
                if let (Some(method), Ok(mut r)) = (text.split(' ').next(), requests.lock()) {
                    r.push(method.to_owned());
                }
                if text.starts_with("BYE ") {
                    bye_received.store(true, Ordering::SeqCst);
                    if !answers.load(Ordering::SeqCst) {
                        continue;
                    }
                    let mut reply = String::from("SIP/2.0 200 OK\r\n");
                    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
                        if let Some(v) = header(&text, name) {
                            reply.push_str(&format!("{name}: {v}\r\n"));
                        }
                    }
                    reply.push_str("Content-Length: 0\r\n\r\n");
                    let _ = sip.send_to(reply.as_bytes(), from).await;
                }
            }
        }));
    }
    Ok(Phone {
        sip,
        server: target,
        dialled: server,
        call_id,
        from_tag,
        to_header,
        cseq: AtomicU32::new(1),
        rtp,
        remote_rtp,
        heard,
        digits_heard,
        bye_received,
        answers_bye,
        requests_received,
        responses: tokio::sync::Mutex::new(responses),
        digits: Arc::default(),
        tone: Mutex::new(None),
        tasks,
    })
}

impl Phone {
    /// Sends a µ-law tone of `hz` (silence for 0) every 20 ms from now on.
    pub fn play_tone(&self, hz: f64) {
        let (rtp, to) = (self.rtp.clone(), self.remote_rtp);
        let digits = self.digits.clone();
        let ssrc = rand::random::<u32>();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (mut seq, mut ts) = (rand::random::<u16>(), rand::random::<u32>());
            let mut phase = 0u64;
            loop {
                tick.tick().await;
                let digit = digits.lock().ok().and_then(|mut d| d.pop_front());
                if let Some(event) = digit.and_then(|d| "0123456789*#".find(d)) {
                    // One key held 100 ms: 4 updates, then the end packet (duration 800)
                    // sent three times (RFC 4733 §2.5.1.4), all sharing the event's
                    // timestamp, then audio goes on.
                    for i in 0..7u16 {
                        let end = i >= 4;
                        let duration = 160 * (i.min(4) + 1);
                        let mut packet = vec![0x80, 101 | if i == 0 { 0x80 } else { 0 }];
                        packet.extend_from_slice(&seq.to_be_bytes());
                        packet.extend_from_slice(&ts.to_be_bytes());
                        packet.extend_from_slice(&ssrc.to_be_bytes());
                        packet.push(event as u8);
                        packet.push(if end { 0x80 | 10 } else { 10 });
                        packet.extend_from_slice(&duration.to_be_bytes());
                        let _ = rtp.send_to(&packet, to).await;
                        seq = seq.wrapping_add(1);
                        tick.tick().await;
                    }
                    ts = ts.wrapping_add(1120);
                    phase += 1120;
                    continue;
                }
                let pcm: Vec<i16> = (0..160)
                    .map(|i| {
                        let t = (phase + i) as f64 / 8000.0;
                        (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
                    })
                    .collect();
                phase += 160;
                let mut packet = vec![0x80, 0];
                packet.extend_from_slice(&seq.to_be_bytes());
                packet.extend_from_slice(&ts.to_be_bytes());
                packet.extend_from_slice(&ssrc.to_be_bytes());
                packet.extend(pcm.iter().map(|&x| G711Law::MuLaw.encode_sample(x)));
                let _ = rtp.send_to(&packet, to).await;
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
        });
        if let Ok(mut tone) = self.tone.lock() {
            if let Some(old) = tone.replace(task) {
                old.abort();
            }
        }
    }

    /// Sends `digit` as an RFC 4733 event (needs [`Phone::play_tone`] running).
    pub fn press(&self, digit: char) {
        if let Ok(mut d) = self.digits.lock() {
            d.push_back(digit);
        }
    }

    /// Stops sending RTP without hanging up (a phone gone dead).
    pub fn stop_sending(&self) {
        if let Ok(mut tone) = self.tone.lock() {
            if let Some(t) = tone.take() {
                t.abort();
            }
        }
    }

    /// The RFC 4733 digits received so far, each once, with its duration in 8 kHz samples.
    pub fn digits_heard(&self) -> Vec<(char, u16)> {
        self.digits_heard
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Forgets what was heard so far.
    pub fn clear_heard(&self) {
        if let Ok(mut h) = self.heard.lock() {
            h.clear();
        }
    }

    /// The decoded audio heard since the last [`Phone::clear_heard`] (8 kHz).
    pub fn heard(&self) -> Vec<i16> {
        self.heard.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Whether the server sent BYE.
    pub fn bye_received(&self) -> bool {
        self.bye_received.load(Ordering::SeqCst)
    }

    /// Whether the server's BYE is answered (the default); when not, the server retransmits it
    /// and its call is not over until an answer goes out.
    pub fn answer_bye(&self, answer: bool) {
        self.answers_bye.store(answer, Ordering::SeqCst);
    }

    /// Sends an out-of-dialog OPTIONS from the call's own socket and returns the status of its
    /// answer. The server handles one socket's datagrams in order: once this returns, it has
    /// handled everything this phone sent before.
    pub async fn options(&self) -> u16 {
        let local = self.sip.local_addr().expect("local address");
        let call_id = format!("{}@test-phone", random_token());
        let options = format!(
            "OPTIONS sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15551230000@voice.example>;tag={}\r\n\
             To: <sip:sipx.webrtc.bandwidth.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            random_token(),
            random_token()
        );
        let mut responses = self.responses.lock().await;
        self.sip
            .send_to(options.as_bytes(), self.server)
            .await
            .expect("send OPTIONS");
        loop {
            let r = tokio::time::timeout(Duration::from_secs(5), responses.recv())
                .await
                .expect("an answer to OPTIONS")
                .expect("responses");
            if header(&r, "Call-ID") == Some(call_id.as_str()) {
                return status(&r).unwrap_or(0);
            }
        }
    }

    /// The methods of the requests the server sent so far (retransmissions included), in order.
    pub fn requests_received(&self) -> Vec<String> {
        self.requests_received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The server that answered the call (its Contact): where its dialog's requests go.
    pub fn answered_by(&self) -> SocketAddr {
        self.server
    }

    /// Where the INVITE was sent.
    pub fn dialled(&self) -> SocketAddr {
        self.dialled
    }

    /// The call's `Call-ID`.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Sends a re-INVITE offering `direction` (`sendonly` puts the call on hold, `sendrecv`
    /// resumes it) and ACKs the final answer. Returns its status and body.
    pub async fn reinvite(&self, direction: &str) -> (u16, String) {
        let local = self.sip.local_addr().expect("local address");
        let rtp_port = self.rtp.local_addr().expect("local address").port();
        let cseq = self.cseq.fetch_add(1, Ordering::SeqCst) + 1;
        let sdp = format!(
            "v=0\r\no=phone 1 {cseq} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
        );
        let common = format!(
            "Max-Forwards: 70\r\n\
             From: <sip:+15551230000@voice.example>;tag={}\r\n\
             To: {}\r\n\
             Call-ID: {}\r\n",
            self.from_tag, self.to_header, self.call_id
        );
        let invite = format!(
            "INVITE sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\n\
             {common}CSeq: {cseq} INVITE\r\n\
             Contact: <sip:phone@{local}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{sdp}",
            random_token(),
            sdp.len()
        );
        let mut responses = self.responses.lock().await;
        self.sip
            .send_to(invite.as_bytes(), self.server)
            .await
            .expect("send re-INVITE");
        let response = loop {
            let r = tokio::time::timeout(Duration::from_secs(5), responses.recv())
                .await
                .expect("an answer to the re-INVITE")
                .expect("responses");
            // Only the answer to this request (a retransmitted final answer to an earlier one may
            // still be on its way).
            let ours = header(&r, "CSeq").is_some_and(|v| v.starts_with(&format!("{cseq} ")));
            if ours && status(&r).is_some_and(|c| c >= 200) {
                break r;
            }
        };
        let code = status(&response).unwrap_or(0);
        let ack = format!(
            "ACK sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\n\
             {common}CSeq: {cseq} ACK\r\n\
             Content-Length: 0\r\n\r\n",
            random_token()
        );
        self.sip
            .send_to(ack.as_bytes(), self.server)
            .await
            .expect("send ACK");
        (code, body(&response).to_owned())
    }

    /// Responses received and not consumed (retransmissions of answers already taken).
    pub async fn unexpected_responses(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut responses = self.responses.lock().await;
        while let Ok(r) = responses.try_recv() {
            out.push(r);
        }
        out
    }

    /// Hangs up (BYE) and waits for the 200.
    pub async fn hangup(&self) -> bool {
        let local = self.sip.local_addr().expect("local address");
        let cseq = self.cseq.fetch_add(1, Ordering::SeqCst) + 1;
        let bye = format!(
            "BYE sip:sipx.webrtc.bandwidth.com:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15551230000@voice.example>;tag={}\r\n\
             To: {}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} BYE\r\n\
             Content-Length: 0\r\n\r\n",
            random_token(),
            self.from_tag,
            self.to_header,
            self.call_id
        );
        // The receive task answers BYEs; the 200 to ours is not observed there, so the call's
        // end is checked by the caller (e.g. through the server's state).
        self.sip.send_to(bye.as_bytes(), self.server).await.is_ok()
    }
}

/// The share of the power of `samples` (8 kHz, as a phone hears) at `hz`: about 0.5 for a pure
/// tone there, 0.25 each for two equal tones, ~0 for a frequency absent from the signal.
pub fn power_at(samples: &[i16], hz: f64) -> f64 {
    let mean_square =
        samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len().max(1) as f64;
    if mean_square == 0.0 {
        return 0.0;
    }
    patchbay_sip::tone::goertzel_power(samples, hz, 8000) / mean_square
}
