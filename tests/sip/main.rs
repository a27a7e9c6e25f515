//! The SIP bridge against the running app over real UDP: phones (a minimal SIP user agent
//! sending and decoding G.711, `tests/support/phone_ua.rs`) dial in with their participant
//! token. Admission refusals are checked by status and `Reason`; media by the frequencies the
//! phones actually decode: everything a phone hears went G.711 → Opus → the SFU → Opus →
//! mixer → G.711.
//!
//! Nothing sleeps: a test waits for the thing it needs (a control event, a condition, or a
//! phone having heard so many milliseconds of audio), bounded by a deadline that only guards
//! against hanging.

use std::net::SocketAddr;
use std::time::Duration;

use patchbay::config::ServeConfig;
use patchbay::control::{Control, ControlEvent, LifecycleEvent, NewParticipant};
use patchbay::domain::{
    AccountId, MediaKind, MediaKinds, ParticipantId, ParticipantQuality, QualityDevice, SessionId,
    Subscriptions,
};
use patchbay_testkit::app::{spawn_app, spawn_app_with, RunningApp};
use patchbay_testkit::db::sqlite_url;
use patchbay_testkit::phone_ua::{self, dial, power_at, Dial, Phone};
use patchbay_testkit::rules::{only, whole};
use patchbay_testkit::wait::{self, eventually, DEADLINE};
use tokio::sync::broadcast;

struct Server {
    control: Control,
    account: AccountId,
    sip: SocketAddr,
    app: RunningApp,
    /// Held for the whole test: see [`SERIAL`].
    _serial: tokio::sync::OwnedMutexGuard<()>,
}

/// The phone tests play and measure real-time audio (20 ms frames, G.711 and Opus in a debug
/// build): run in parallel on a 2-core machine they starve each other's mixers and the tones
/// they measure. Each test holds this for its whole run, so they take turns.
static SERIAL: std::sync::LazyLock<std::sync::Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(Default::default);

async fn server() -> Server {
    server_for("sip").await
}

async fn server_for(account: &str) -> Server {
    with_app(spawn_app(&sqlite_url()).await, account).await
}

/// A server with a hold tone and an RTP timeout of its own.
async fn server_with(hold_tone: u32, rtp_timeout_s: u64) -> Server {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.phone_hold_tone = hold_tone;
    config.phone_rtp_timeout = rtp_timeout_s;
    with_app(spawn_app_with(&config).await, "sip").await
}

async fn with_app(app: RunningApp, account: &str) -> Server {
    let serial = SERIAL.clone().lock_owned().await;
    let account = AccountId::parse(account).expect("id");
    app.control
        .create_account(account.clone())
        .await
        .expect("account");
    Server {
        control: app.control.clone(),
        account,
        sip: app.sip,
        app,
        _serial: serial,
    }
}

impl Server {
    async fn session(&self) -> SessionId {
        self.control
            .create_session(&self.account, None)
            .await
            .expect("session")
            .id
    }

    async fn participant(&self) -> (ParticipantId, String) {
        let (p, token) = self
            .control
            .create_participant(
                &self.account,
                NewParticipant {
                    publish_permissions: Some(MediaKinds::AUDIO),
                    ..Default::default()
                },
            )
            .await
            .expect("participant");
        (p.id, token)
    }

    async fn join(&self, session: SessionId, p: ParticipantId, subscriptions: Subscriptions) {
        self.control
            .add_member(&self.account, session, p, Some(subscriptions))
            .await
            .expect("member");
    }

    async fn set(&self, session: SessionId, p: ParticipantId, subscriptions: Subscriptions) {
        self.control
            .set_subscriptions(&self.account, session, &[(p, subscriptions)])
            .await
            .expect("subscriptions");
    }
}

/// G.711 samples per millisecond.
const SAMPLES_PER_MS: usize = 8;

/// Waits until the phone has heard `ms` milliseconds of audio since it last cleared what it
/// heard, and returns all of it.
async fn hear(phone: &Phone, ms: usize) -> Vec<i16> {
    let what = format!("the phone hears {ms} ms of audio");
    eventually(&what, DEADLINE, || async {
        phone.heard().len() >= ms * SAMPLES_PER_MS
    })
    .await;
    phone.heard()
}

/// Listens until the phone has heard `ms` milliseconds of audio, and returns it.
async fn listen(phone: &Phone, ms: usize) -> Vec<i16> {
    phone.clear_heard();
    hear(phone, ms).await
}

/// Waits for the lifecycle event `wanted` describes.
async fn lifecycle(
    events: &mut broadcast::Receiver<ControlEvent>,
    what: &str,
    wanted: impl Fn(&LifecycleEvent) -> bool,
) {
    wait::event(
        events,
        what,
        DEADLINE,
        |e| matches!(e, ControlEvent::Lifecycle(l) if wanted(l)),
    )
    .await;
}

/// Waits for the phone's call to be over at the server (its device disconnected).
async fn disconnected(events: &mut broadcast::Receiver<ControlEvent>, p: ParticipantId) {
    lifecycle(
        events,
        "the phone's device disconnects",
        |e| matches!(e, LifecycleEvent::Disconnected { participant, .. } if *participant == p),
    )
    .await;
}

async fn dial_ok(sip: SocketAddr, token: &str) -> Phone {
    match dial(sip, &Dial::with_token(token)).await {
        Ok(p) => p,
        Err(r) => panic!("refused: {r:?}"),
    }
}

/// A new session of `s` with two members, each hearing the whole session: the session, and
/// each member with its token.
async fn two_members(s: &Server) -> (SessionId, [(ParticipantId, String); 2]) {
    let session = s.session().await;
    let (a, ta) = s.participant().await;
    let (b, tb) = s.participant().await;
    s.join(session, a, whole(session)).await;
    s.join(session, b, whole(session)).await;
    (session, [(a, ta), (b, tb)])
}

/// Two phones dialled into one new session of `s`, each hearing the whole session.
async fn two_phones(s: &Server) -> (Phone, Phone) {
    let (_, [(_, ta), (_, tb)]) = two_members(s).await;
    (dial_ok(s.sip, &ta).await, dial_ok(s.sip, &tb).await)
}

async fn refused(sip: SocketAddr, how: Dial) -> phone_ua::Refused {
    match dial(sip, &how).await {
        Ok(_) => panic!("answered, expected a refusal"),
        Err(r) => r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_why_with_precise_codes() {
    let s = server().await;
    let session = s.session().await;

    // No User-To-User at all, a garbage token, a well-formed but foreign token: 403.
    let mut how = Dial::with_token("x");
    how.user_to_user = None;
    let r = refused(s.sip, how).await;
    assert_eq!(r.code, 403, "{r:?}");
    assert!(r.reason.is_some(), "a Reason header explains it");
    let r = refused(s.sip, Dial::with_token("not-a-jwt")).await;
    assert_eq!(r.code, 403, "{r:?}");
    let r = refused(
        s.sip,
        Dial::with_token("eyJhbGciOiJIUzI1NiJ9.eyJhIjoic2lwIn0.c2lnbmF0dXJl"),
    )
    .await;
    assert_eq!(r.code, 403, "{r:?}");

    // Deleted participant: 404.
    let (gone, token) = s.participant().await;
    s.control
        .delete_participant(&s.account, gone)
        .await
        .expect("delete");
    let r = refused(s.sip, Dial::with_token(&token)).await;
    assert_eq!(r.code, 404, "{r:?}");

    // In no session: 480.
    let (_, lonely) = s.participant().await;
    let r = refused(s.sip, Dial::with_token(&lonely)).await;
    assert_eq!(r.code, 480, "{r:?}");

    // No common codec (G.729 only): 488.
    let (p, token) = s.participant().await;
    s.join(session, p, whole(session)).await;
    let mut how = Dial::with_token(&token);
    how.formats = "18";
    how.attributes = "a=rtpmap:18 G729/8000\r\n";
    let r = refused(s.sip, how).await;
    assert_eq!(r.code, 488, "{r:?}");

    // Already connected: the same token while its call is up: 486.
    let first = dial_ok(s.sip, &token).await;
    let r = refused(s.sip, Dial::with_token(&token)).await;
    assert_eq!(r.code, 486, "{r:?}");
    // The JWT-only form of the header works too (once the first call is over).
    let mut events = s.control.watch();
    first.hangup().await;
    disconnected(&mut events, p).await;
    let mut how = Dial::with_token(&token);
    how.user_to_user = Some(format!("{token};encoding=jwt"));
    let again = dial(s.sip, &how).await.expect("JWT-only form answered");
    again.hangup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phones_hear_each_other() {
    let s = server().await;
    let (pa, pb) = two_phones(&s).await;
    pa.play_tone(1000.0);
    pb.play_tone(440.0);
    hear(&pa, 800).await;
    let heard_a = listen(&pa, 1000).await;
    let heard_b = pb.heard();
    assert!(heard_a.len() >= 6000, "a heard {} samples", heard_a.len());
    assert!(heard_b.len() >= 6000, "b heard {} samples", heard_b.len());
    assert!(
        power_at(&heard_a, 440.0) > 0.2,
        "a hears b's 440 Hz: {}",
        power_at(&heard_a, 440.0)
    );
    assert!(power_at(&heard_a, 1000.0) < 0.01, "a does not hear itself");
    assert!(
        power_at(&heard_b, 1000.0) > 0.2,
        "b hears a's 1 kHz: {}",
        power_at(&heard_b, 1000.0)
    );
    assert!(power_at(&heard_b, 440.0) < 0.01, "b does not hear itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_the_caller_never_hears_the_supervisor() {
    let s = server().await;
    let session = s.session().await;
    let (caller, tc) = s.participant().await;
    let (agent, ta) = s.participant().await;
    let (supervisor, ts) = s.participant().await;
    s.join(session, caller, only(&[agent])).await;
    s.join(session, agent, only(&[caller, supervisor])).await;
    s.join(session, supervisor, only(&[caller, agent])).await;
    let pc = dial_ok(s.sip, &tc).await;
    let pa = dial_ok(s.sip, &ta).await;
    let ps = dial_ok(s.sip, &ts).await;
    pc.play_tone(440.0);
    pa.play_tone(1000.0);
    ps.play_tone(1700.0);
    hear(&pc, 800).await;
    pa.clear_heard();
    let heard_caller = listen(&pc, 1000).await;
    let heard_agent = pa.heard();
    assert!(
        power_at(&heard_caller, 1000.0) > 0.2,
        "the caller hears the agent"
    );
    assert!(
        power_at(&heard_caller, 1700.0) < 0.001,
        "no trace of the supervisor at the caller: {}",
        power_at(&heard_caller, 1700.0)
    );
    assert!(
        power_at(&heard_agent, 440.0) > 0.05,
        "the agent hears the caller"
    );
    assert!(
        power_at(&heard_agent, 1700.0) > 0.05,
        "the agent hears the supervisor"
    );

    // Live re-wire: the caller is now subscribed to the supervisor as well.
    s.set(session, caller, only(&[agent, supervisor])).await;
    listen(&pc, 500).await;
    let heard_caller = listen(&pc, 1000).await;
    assert!(
        power_at(&heard_caller, 1700.0) > 0.05,
        "after the re-wire the caller hears the supervisor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_leaves_media_and_only_deleting_the_participant_hangs_up() {
    let s = server().await;
    let (session, [(a, ta), (b, tb)]) = two_members(&s).await;
    let pa = dial_ok(s.sip, &ta).await;
    pa.play_tone(1000.0);
    // The phone publishes its stream: the routes show it.
    eventually("the phone's stream is published", DEADLINE, || async {
        let routes = s.control.routes(&s.account, session).await.expect("routes");
        format!("{routes:?}").contains("phone")
    })
    .await;
    // BYE from the phone: it leaves media but stays a participant and a member.
    let mut events = s.control.watch();
    assert!(pa.hangup().await);
    disconnected(&mut events, a).await;
    let p = s
        .control
        .participant(&s.account, a)
        .await
        .expect("still a participant");
    assert_eq!(p.session, Some(session));
    // It may dial again (not "already connected").
    let pa = dial_ok(s.sip, &ta).await;
    // Removing the other phone's participant from the session by REST keeps its call up
    // (reference §4.1): it goes on receiving RTP, and gets no BYE.
    let pb = dial_ok(s.sip, &tb).await;
    s.control
        .remove_member(&s.account, session, b)
        .await
        .expect("remove");
    listen(&pb, 1500).await;
    assert!(!pb.bye_received(), "leaving the session does not hang up");
    // Deleting a participant hangs up.
    s.control
        .delete_participant(&s.account, a)
        .await
        .expect("delete");
    eventually("deleting the participant sends BYE", DEADLINE, || async {
        pa.bye_received()
    })
    .await;
    s.control
        .delete_participant(&s.account, b)
        .await
        .expect("delete");
    eventually(
        "deleting the participant in no session sends BYE",
        DEADLINE,
        || async { pb.bye_received() },
    )
    .await;
}

/// Issue 10 item 3: a caller moves from a queue session to an agent's session on the same call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_moves_to_another_session_on_the_same_call() {
    let s = server_with(425, 30).await;
    let queue = s.session().await;
    let desk = s.session().await;
    let (caller, tc) = s.participant().await;
    let (waiting, tw) = s.participant().await;
    let (agent, ta) = s.participant().await;
    s.join(queue, caller, whole(queue)).await;
    s.join(queue, waiting, whole(queue)).await;
    s.join(desk, agent, whole(desk)).await;
    let pc = dial_ok(s.sip, &tc).await;
    let pw = dial_ok(s.sip, &tw).await;
    let pa = dial_ok(s.sip, &ta).await;
    pc.play_tone(1000.0);
    pw.play_tone(440.0);
    pa.play_tone(1700.0);
    hear(&pw, 600).await;
    assert!(
        power_at(&listen(&pw, 800).await, 1000.0) > 0.2,
        "the queue hears the caller"
    );

    // Out of the queue: the call stays up and hears the hold tone.
    s.control
        .remove_member(&s.account, queue, caller)
        .await
        .expect("remove");
    listen(&pc, 400).await;
    let held = listen(&pc, 800).await;
    assert!(
        power_at(&held, 425.0) > 0.2,
        "the hold tone in no session: {}",
        power_at(&held, 425.0)
    );
    assert!(power_at(&held, 440.0) < 0.01, "nothing of the queue");

    // Into the agent's session by REST: no BYE, no new INVITE, the same call.
    s.join(desk, caller, whole(desk)).await;
    listen(&pc, 500).await;
    pa.clear_heard();
    pw.clear_heard();
    let heard_caller = listen(&pc, 1000).await;
    let heard_agent = pa.heard();
    let heard_queue = pw.heard();
    assert!(
        power_at(&heard_caller, 1700.0) > 0.2,
        "the caller hears the agent: {}",
        power_at(&heard_caller, 1700.0)
    );
    assert!(
        power_at(&heard_caller, 425.0) < 0.01,
        "no hold tone any more"
    );
    assert!(
        power_at(&heard_agent, 1000.0) > 0.2,
        "the agent hears the caller: {}",
        power_at(&heard_agent, 1000.0)
    );
    assert!(
        power_at(&heard_queue, 1000.0) < 0.01,
        "the queue no longer hears the caller: {}",
        power_at(&heard_queue, 1000.0)
    );
    assert!(!pc.bye_received(), "the caller's call was never hung up");
}

/// Issue 10 item 4: a leg that stops sending RTP without BYE is hung up after the timeout;
/// a call the phone holds (inactive) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_phone_is_hung_up_and_may_dial_again() {
    let s = server_with(0, 1).await;
    let session = s.session().await;
    let (a, ta) = s.participant().await;
    let (b, tb) = s.participant().await;
    s.join(session, a, whole(session)).await;
    s.join(session, b, whole(session)).await;
    let mut events = s.control.watch();
    let pa = dial_ok(s.sip, &ta).await;
    let pb = dial_ok(s.sip, &tb).await;
    pa.play_tone(1000.0);
    pb.play_tone(440.0);
    hear(&pa, 300).await;
    // b puts the call on hold (inactive) and goes quiet first; a goes quiet after it.
    let (code, _) = pb.reinvite("inactive").await;
    assert_eq!(code, 200);
    pb.stop_sending();
    listen(&pa, 200).await;
    pa.stop_sending();
    disconnected(&mut events, a).await;
    eventually("the dead leg gets BYE", DEADLINE, || async {
        pa.bye_received()
    })
    .await;
    assert!(
        !pb.bye_received(),
        "a held call quiet for longer than a dead one is not dead"
    );
    // The same token dials again and is answered (its device is gone, no 486).
    let again = dial_ok(s.sip, &ta).await;
    again.play_tone(1000.0);
    hear(&again, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_dtmf_becomes_a_control_event() {
    let s = server().await;
    let session = s.session().await;
    let (a, ta) = s.participant().await;
    s.join(session, a, whole(session)).await;
    let mut events = s.control.watch();
    let pa = dial_ok(s.sip, &ta).await;
    pa.play_tone(1000.0);
    lifecycle(
        &mut events,
        "the phone publishes its stream",
        |e| matches!(e, LifecycleEvent::StreamPublished { participant, .. } if *participant == a),
    )
    .await;
    for d in ['4', '#'] {
        pa.press(d);
    }
    let mut digits = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while digits.len() < 2 {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("DTMF events within 5 s")
            .expect("control events");
        if let ControlEvent::Lifecycle(LifecycleEvent::PhoneDtmf {
            participant,
            digit,
            duration_ms,
        }) = event
        {
            assert_eq!(participant, a);
            assert_eq!(duration_ms, 100, "the test phone holds each key 100 ms");
            digits.push(digit);
        }
    }
    assert_eq!(digits, vec!['4', '#'], "each key once, in order");
}

/// With `--drain-phones hang-up`, a graceful stop sends every call a BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_hangs_up_every_call() {
    let mut config = ServeConfig::for_database(&sqlite_url());
    config.drain_phones = patchbay::config::DrainPhones::HangUp;
    let s = with_app(spawn_app_with(&config).await, "stop").await;
    let session = s.session().await;
    let mut phones = Vec::new();
    for _ in 0..3 {
        let (p, token) = s.participant().await;
        s.join(session, p, whole(session)).await;
        phones.push(dial_ok(s.sip, &token).await);
    }
    assert!(phones.iter().all(|p| !p.bye_received()));
    s.app.stop().await.expect("clean stop");
    for p in &phones {
        assert!(
            p.bye_received(),
            "every phone got BYE before the server stopped"
        );
    }
}

/// By default a graceful stop leaves established calls up for the next process on the same
/// ports and database: no BYE, and each call's record (dialog, RTP port, codec) is stored for
/// it (tests/interop/browser/restart.test.mjs shows the next process taking them over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_leaves_calls_up_for_the_next_process() {
    let s = server_for("keep").await;
    let session = s.session().await;
    let mut phones = Vec::new();
    let mut participants = Vec::new();
    for _ in 0..2 {
        let (p, token) = s.participant().await;
        s.join(session, p, whole(session)).await;
        phones.push(dial_ok(s.sip, &token).await);
        participants.push(p);
    }
    let control = s.control.clone();
    eventually("both calls stored", DEADLINE, || async {
        let stored = control.phone_calls().await.expect("stored calls");
        participants
            .iter()
            .all(|p| stored.iter().any(|c| c.participant == *p))
    })
    .await;
    s.app.stop().await.expect("clean stop");
    // An absence, checked over a window: a BYE sent before the stop returned arrives in it.
    #[allow(clippy::disallowed_methods)]
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        phones.iter().all(|p| !p.bye_received()),
        "no phone got a BYE"
    );
    let stored = control.phone_calls().await.expect("stored calls");
    for p in &participants {
        let c = stored
            .iter()
            .find(|c| c.participant == *p)
            .expect("the call is still stored for the next process");
        assert!(c.call.starts_with("sip-"), "{}", c.call);
        assert!(c.record.contains("\"rtpPort\""), "{}", c.record);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_resume_by_reinvite() {
    let s = server().await;
    let (pa, pb) = two_phones(&s).await;
    pb.play_tone(440.0);
    pa.play_tone(1000.0);
    hear(&pa, 600).await;
    assert!(power_at(&listen(&pa, 500).await, 440.0) > 0.2);

    // Hold: the phone only sends; patchbay answers recvonly and stops sending to it.
    let (code, answer) = pa.reinvite("sendonly").await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("a=recvonly"), "{answer}");
    let held_origin = origin(&answer);
    // The held phone hears nothing while the other one goes on hearing it: b's audio is the
    // clock (200 ms for what was in flight, then 500 ms of silence at a).
    listen(&pb, 200).await;
    pa.clear_heard();
    listen(&pb, 500).await;
    let held = pa.heard();
    assert!(
        held.is_empty(),
        "no audio to a held phone ({} samples)",
        held.len()
    );

    // Resume.
    let (code, answer) = pa.reinvite("sendrecv").await;
    assert_eq!(code, 200, "{answer}");
    assert!(answer.contains("a=sendrecv"), "{answer}");
    // RFC 3264 §8: a new answer in the dialog keeps the o= session id, version + 1.
    let resumed_origin = origin(&answer);
    assert_eq!(resumed_origin.0, held_origin.0, "{answer}");
    assert_eq!(resumed_origin.1, held_origin.1 + 1, "{answer}");
    listen(&pa, 300).await;
    let resumed = listen(&pa, 700).await;
    assert!(
        power_at(&resumed, 440.0) > 0.2,
        "audio again after resume: {}",
        power_at(&resumed, 440.0)
    );
    // Our ACKs stopped the 200s: nothing is retransmitted afterwards (within 1.5 s of audio,
    // past the first two retransmission intervals).
    listen(&pa, 1500).await;
    let stray = pa.unexpected_responses().await;
    assert!(stray.is_empty(), "retransmitted after ACK: {stray:#?}");
}

/// The `o=` line's session id and version of an SDP body.
fn origin(sdp: &str) -> (u64, u64) {
    let line = sdp
        .lines()
        .find_map(|l| l.strip_prefix("o="))
        .unwrap_or_else(|| panic!("no o= line: {sdp}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("o= field {i}: {line}"))
    };
    (number(1), number(2))
}

/// Someone who can reach a call's RTP port (and not the phone's path) sends junk and
/// well-formed RTP with an SSRC of their own to it, for as long as the call is measured: the
/// call's audio never goes to them, their audio never reaches the session, and the phone goes
/// on hearing and being heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // the stranger's own clock and task
async fn a_stranger_on_the_rtp_port_neither_hears_nor_moves_the_call() {
    let s = server().await;
    let (pa, pb) = two_phones(&s).await;
    pa.play_tone(600.0);
    pb.play_tone(440.0);
    hear(&pa, 600).await;

    let stranger = std::sync::Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let target = pa.remote_rtp;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stranger, stop) = (stranger.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq: u16 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Junk, then a 20 ms frame of a 1 kHz tone under the stranger's own SSRC.
                let _ = stranger.send_to(b"hello", target).await;
                let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x5e, 0x11, 0x00, 0x01];
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                packet.extend((0..160).map(|i| {
                    let t = f64::from(i + u32::from(seq) * 160) / 8000.0;
                    patchbay_sip::g711::ulaw_encode(
                        (12000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16,
                    )
                }));
                let _ = stranger.send_to(&packet, target).await;
                seq = seq.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let heard_a = listen(&pa, 1500).await;
    let heard_b = listen(&pb, 1500).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.await.expect("stranger task");

    let mut buf = [0u8; 2048];
    let mut leaked = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(200), stranger.recv_from(&mut buf)).await
    {
        leaked += 1;
    }
    assert_eq!(leaked, 0, "the call's audio went to the stranger");
    let shares = |heard: &[i16]| {
        [440.0, 600.0, 1000.0].map(|hz| format!("{hz} Hz: {:.3}", power_at(heard, hz)))
    };
    assert!(
        power_at(&heard_a, 440.0) > 0.2,
        "the phone goes on hearing b: {} samples, {:?}",
        heard_a.len(),
        shares(&heard_a)
    );
    assert!(
        power_at(&heard_b, 600.0) > 0.2,
        "b goes on hearing the phone: {} samples, {:?}",
        heard_b.len(),
        shares(&heard_b)
    );
    assert!(
        power_at(&heard_b, 1000.0) < 0.01,
        "the stranger's tone reached the session: {}",
        power_at(&heard_b, 1000.0)
    );
}

/// A browser-like str0m publisher over real UDP: it publishes one audio track (Opus and
/// telephone-event at 48 kHz, as Chromium offers) and presses `keys`, each held 100 ms the way
/// Chromium sends it (updates every 20 ms, then the end packet three times, one timestamp),
/// while Opus frames flow. Runs until `stop` is set.
#[allow(clippy::disallowed_methods)] // the client's own clock and task
fn browser_pressing(
    ws_url: String,
    keys: &'static [u8],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    use patchbay_testkit::rtc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    use str0m::change::SdpAnswer;
    use str0m::format::Codec;
    use str0m::media::{Direction, Frequency, MediaKind, MediaTime};
    use str0m::{Candidate, Event, Input, Output};
    use tokio_tungstenite::tungstenite::Message;

    tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local = socket.local_addr().expect("local address");
        let mut rtc = rtc::browser_rtc(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp").expect("candidate"));
        let mut api = rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("stream-b".into()),
            None,
            None,
        );
        let (offer, pending) = api.apply().expect("an offer");
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("upgrade");
        let request = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "offerSdp",
            "params": {"sdpOffer": offer.to_sdp_string(),
                "mediaMetadata": {"mediaStreams": {"stream-b": {"alias": "mic"}}}}});
        ws.send(Message::Text(request.to_string().into()))
            .await
            .expect("send");
        let answer = loop {
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["id"] == serde_json::json!(1) {
                break v["result"]["sdpAnswer"]
                    .as_str()
                    .expect("answer")
                    .to_owned();
            }
        };
        let answer = SdpAnswer::from_sdp_string(&answer).expect("a parsable answer");
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .expect("the answer fits");

        let mut buf = vec![0u8; 2048];
        let mut connected = false;
        let mut frame = 0u64;
        let start = Instant::now();
        let mut next_frame = start;
        // (key index, packet index within its press).
        let mut press = (0usize, 0u64);
        while !stop.load(Ordering::SeqCst) {
            let timeout = loop {
                match rtc.poll_output().expect("poll") {
                    Output::Transmit(t) => {
                        let _ = socket.send_to(&t.contents, t.destination).await;
                    }
                    Output::Event(Event::Connected) => connected = true,
                    Output::Event(_) => {}
                    Output::Timeout(t) => break t,
                }
            };
            let wake = if connected {
                timeout.min(next_frame)
            } else {
                timeout
            };
            let wait = wake.saturating_duration_since(Instant::now());
            if let Ok(Ok((n, from))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await
            {
                let _ = rtc::receive(&mut rtc, from, local, &buf[..n], Instant::now());
                continue;
            }
            let now = Instant::now();
            let _ = rtc.handle_input(Input::Timeout(now));
            if !connected || now < next_frame {
                continue;
            }
            next_frame += Duration::from_millis(20);
            frame += 1;
            let time = MediaTime::new(frame * 960, Frequency::FORTY_EIGHT_KHZ);
            // Opus silence; after 1 s of it, the keys, one every 400 ms.
            rtc::write_frame(
                &mut rtc,
                mid,
                Codec::Opus,
                time,
                vec![0xF8, 0xFF, 0xFE],
                now,
            );
            let (key, i) = press;
            if frame < 50 || key >= keys.len() {
                continue;
            }
            if i < 20 {
                // Packets 0–3 update, 4–6 are the end packet three times; then a pause.
                if i < 7 {
                    let duration = (960 * (i.min(4) + 1)) as u16;
                    let end = if i >= 4 { 0x80 } else { 0 };
                    let event_time =
                        MediaTime::new((50 + key as u64 * 20) * 960, Frequency::FORTY_EIGHT_KHZ);
                    let mut payload = vec![keys[key], end | 10];
                    payload.extend_from_slice(&duration.to_be_bytes());
                    rtc::write_frame(&mut rtc, mid, Codec::Tele, event_time, payload, now);
                }
                press = (key, i + 1);
            } else {
                press = (key + 1, 0);
            }
        }
    })
}

/// Issue 10 item 6: a key pressed in the browser reaches the phone once (not once per end
/// packet), for as long as it was held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_keys_reach_the_phone_once_each() {
    let s = server().await;
    let session = s.session().await;
    let (browser, tb) = s.participant().await;
    let (phone, tp) = s.participant().await;
    s.join(session, browser, whole(session)).await;
    s.join(session, phone, whole(session)).await;
    let pp = dial_ok(s.sip, &tp).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = format!(
        "ws://{}/v3/?token={tb}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId=b1",
        s.app.http
    );
    // Events 1, 2, 3 (keys '1', '2', '3').
    let task = browser_pressing(url, &[1, 2, 3], stop.clone());
    eventually("three keys reach the phone", DEADLINE, || async {
        pp.digits_heard().len() >= 3
    })
    .await;
    // The end packets still in flight would show up as repeats within this time.
    listen(&pp, 600).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = task.await;
    assert_eq!(
        pp.digits_heard(),
        vec![('1', 800), ('2', 800), ('3', 800)],
        "each key once, 100 ms (800 samples at 8 kHz) each"
    );
}

/// The quality of `p`, a member of `session`, as `GET …/quality` reads it.
async fn phone_quality(s: &Server, session: SessionId, p: ParticipantId) -> ParticipantQuality {
    s.control
        .quality(&s.account, session, p)
        .await
        .expect("quality")
        .measured
        .expect("measured here")
}

/// Issue 21: a phone's RTP leg, measured by the bridge, is its quality view: what it sends
/// (packets, payload, loss and jitter at the jitter buffer) and what it is sent. The counts
/// follow the packets that really flow: when the phone stops sending, its `publish` side
/// stops counting while its `subscribe` side (the other phone still talking) goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phones_rtp_leg_is_its_quality_view() {
    let s = server().await;
    let (session, [(a, ta), (_, tb)]) = two_members(&s).await;
    let (pa, pb) = (dial_ok(s.sip, &ta).await, dial_ok(s.sip, &tb).await);
    pa.play_tone(1000.0);
    pb.play_tone(440.0);
    hear(&pa, 1000).await;
    eventually("the phone's leg is reported", DEADLINE, || async {
        let q = phone_quality(&s, session, a).await;
        q.publish.is_some_and(|c| c.packets >= 50) && q.subscribe.is_some_and(|c| c.packets >= 50)
    })
    .await;
    let q = phone_quality(&s, session, a).await;
    assert_eq!(q.device, QualityDevice::Phone);
    let publish = q.publish.clone().expect("publish");
    assert!(publish.connected);
    let track = publish.tracks.first().expect("the leg's track");
    assert_eq!(track.mid, "phone");
    assert_eq!(track.kind, Some(MediaKind::Audio));
    // G.711 at 20 ms: 160 bytes of payload a packet.
    assert_eq!(publish.bytes, publish.packets * 160, "{publish:?}");
    assert!(publish
        .loss_fraction
        .is_some_and(|l| (0.0..=1.0).contains(&l)));
    assert!(publish.jitter_ms.is_some_and(|j| j >= 0.0));
    assert!(publish.bitrate_bps.is_some_and(|r| r > 0), "{publish:?}");
    assert!(q.level().is_some(), "a phone's leg has a level: {q:?}");

    // The phone stops sending: what it sends stops counting, what it is sent does not. Its
    // last packets are counted once 100 more (2 s of the other phone) were sent to it; then
    // 100 more go by, and its own count has not moved.
    pa.stop_sending();
    let sent = |q: &ParticipantQuality| q.publish.as_ref().map_or(0, |c| c.packets);
    let got = |q: &ParticipantQuality| q.subscribe.as_ref().map_or(0, |c| c.packets);
    let after_packets = |n: u64| {
        let s = &s;
        async move {
            eventually(
                "100 more packets are sent to the phone",
                DEADLINE,
                || async { got(&phone_quality(s, session, a).await) >= n },
            )
            .await;
            phone_quality(s, session, a).await
        }
    };
    let settled = after_packets(got(&q) + 100).await;
    let later = after_packets(got(&settled) + 100).await;
    assert_eq!(sent(&later), sent(&settled), "{later:?}");
    assert!(got(&later) >= got(&settled) + 100);
    drop(pb);
}
