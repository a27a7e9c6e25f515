//! Several serving processes on one PostgreSQL database (issue 20), as far as they go today:
//! a change made through one process reaches the devices connected to another. Two apps run
//! on a fresh database; phones dial one of them (B) while every change is made through the
//! other (A). Who hears whom is asserted from the audio the phones receive. Then a process
//! taken for dead while it runs closes its devices without announcing their end twice (and
//! with 1013, so the SDK reconnects). Placement: two phones of one session dialling different
//! processes meet on the session's host (another proxies its INVITE there, a third configured to
//! redirect answers 302), and
//! `patchbay cluster status` shows the host with the session and both calls. Fencing: a
//! process cut off from the database alone (a TCP forwarder in front of PostgreSQL) past its
//! lease writes no second end of a device when it comes back. A phone call a graceful stop
//! left up for a successor that never comes is ended by the process still serving.
#![allow(clippy::disallowed_methods)] // the claimant's recorder task; a settle after a close; the forwarder

use std::net::SocketAddr;

use patchbay::config::{ServeConfig, SipIngress};
use patchbay::control::{Control, NewParticipant};
use patchbay::domain::{AccountId, MediaKinds, ParticipantId, SessionId};
use patchbay_testkit::app::{spawn_app, spawn_app_with, RunningApp};
use patchbay_testkit::db::fresh_postgres_url;
use patchbay_testkit::phone_ua::{dial, power_at, Dial, Phone};
use patchbay_testkit::rules::only;
use patchbay_testkit::wait::{eventually, DEADLINE};

/// Half a second of what `phone` hears from now on.
async fn listen(phone: &Phone) -> Vec<i16> {
    phone.clear_heard();
    eventually("the phone hears half a second", DEADLINE, || async {
        phone.heard().len() >= 4000
    })
    .await;
    phone.heard()
}

/// Listens until `phone` hears `hz` (failing after the deadline).
async fn hears(phone: &Phone, hz: f64, what: &str) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let heard = listen(phone).await;
        if power_at(&heard, hz) > 0.05 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "{what}: {hz} Hz not heard (power {})",
            power_at(&heard, hz)
        );
    }
}

/// Two processes on a fresh database, an account, and a session created through the first.
async fn two_processes() -> (String, RunningApp, RunningApp, AccountId, SessionId) {
    two_processes_with(|_| {}).await
}

/// [`two_processes`], each configured by `tune`.
async fn two_processes_with(
    tune: impl Fn(&mut ServeConfig),
) -> (String, RunningApp, RunningApp, AccountId, SessionId) {
    let url = fresh_postgres_url();
    let mut config = ServeConfig::for_database(&url);
    tune(&mut config);
    let a = spawn_app_with(&config).await;
    let b = spawn_app_with(&config).await;
    let account = AccountId::parse("cluster").expect("id");
    a.control
        .create_account(account.clone())
        .await
        .expect("account");
    let session = a
        .control
        .create_session(&account, None)
        .await
        .expect("session")
        .id;
    (url, a, b, account, session)
}

async fn participant(control: &Control, account: &AccountId) -> (ParticipantId, String) {
    let (p, token) = control
        .create_participant(
            account,
            NewParticipant {
                publish_permissions: Some(MediaKinds::AUDIO),
                ..Default::default()
            },
        )
        .await
        .expect("participant");
    (p.id, token)
}

/// Adds `participants` to `session` through `control`, each hearing the whole session.
async fn join_whole(
    control: &Control,
    account: &AccountId,
    session: SessionId,
    participants: impl IntoIterator<Item = ParticipantId>,
) {
    for p in participants {
        control
            .add_member(
                account,
                session,
                p,
                Some(patchbay_testkit::rules::whole(session)),
            )
            .await
            .expect("member");
    }
}

async fn dial_ok(sip: SocketAddr, token: &str) -> Phone {
    match dial(sip, &Dial::with_token(token)).await {
        Ok(p) => p,
        Err(r) => panic!("refused: {r:?}"),
    }
}

/// The contact centre's whisper, with the calls on process B and every change made through
/// process A: the caller starts hearing the supervisor when A subscribes it, a supervisor
/// deleted through A is hung up on B, and a session deleted through A stops the audio on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_through_one_process_reach_the_calls_on_another() {
    let (url, a, b, account, session) = two_processes().await;
    let (caller, tc) = participant(&a.control, &account).await;
    let (agent, ta) = participant(&a.control, &account).await;
    let (supervisor, ts) = participant(&a.control, &account).await;
    for (p, rules) in [
        (caller, only(&[agent])),
        (agent, only(&[caller, supervisor])),
        (supervisor, only(&[caller, agent])),
    ] {
        a.control
            .add_member(&account, session, p, Some(rules))
            .await
            .expect("member");
    }
    let pc = dial_ok(b.sip, &tc).await;
    let pa = dial_ok(b.sip, &ta).await;
    let ps = dial_ok(b.sip, &ts).await;
    pc.play_tone(440.0);
    pa.play_tone(1000.0);
    ps.play_tone(1700.0);
    hears(&pc, 1000.0, "the caller hears the agent").await;
    hears(&pa, 1700.0, "the agent hears the supervisor").await;
    let heard = listen(&pc).await;
    assert!(
        power_at(&heard, 1700.0) < 0.001,
        "the whisper: no trace of the supervisor at the caller ({})",
        power_at(&heard, 1700.0)
    );

    // Through A: the caller is subscribed to the supervisor as well (a barge-in).
    a.control
        .set_subscriptions(&account, session, &[(caller, only(&[agent, supervisor]))])
        .await
        .expect("subscriptions");
    hears(
        &pc,
        1700.0,
        "after the change through A, the caller hears the supervisor",
    )
    .await;

    // A change no process rings for (made through a control with no doorbell, as a ring
    // lost on the way would be): B catches up when its listener loses its connection, which
    // this test cuts from the database's side. The agent stops hearing the supervisor.
    let silent = Control::new(std::sync::Arc::new(
        patchbay::store::open(&url).await.expect("store"),
    ))
    .await
    .expect("control");
    silent
        .set_subscriptions(&account, session, &[(agent, only(&[caller]))])
        .await
        .expect("subscriptions");
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_all(&mut conn)
        .await
        .expect("cut the listeners");
        assert_eq!(cut, [true, true], "both processes listen");
    }
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let heard = listen(&pa).await;
        if power_at(&heard, 1700.0) < 0.001 && power_at(&heard, 440.0) > 0.05 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "after its listener reconnected, B re-read the session: the agent no longer hears the supervisor"
        );
    }

    // Through A: the supervisor is deleted; its call on B is hung up.
    a.control
        .delete_participant(&account, supervisor)
        .await
        .expect("delete");
    eventually("the supervisor's phone gets a BYE", DEADLINE, || async {
        ps.bye_received()
    })
    .await;

    // Through A: the session is deleted; the calls stay up (a phone outlives its session)
    // and hear nothing of each other.
    a.control
        .delete_session(&account, session)
        .await
        .expect("delete session");
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let heard = listen(&pc).await;
        if power_at(&heard, 1000.0) < 0.001 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the caller still hears the agent after the session's deletion through A"
        );
    }
    drop((pc, pa, ps));
    b.stop().await.expect("stop B");
    a.stop().await.expect("stop A");
}

/// Placement: three phones of one session dial different processes. The first call places
/// the session on the process it reached (A). B, by default, sends the second call's INVITE on
/// to A as a stateless proxy: the phone is answered by A (its dialog goes there) without
/// knowing. C runs with `--sip-ingress redirect` and answers the third call 302 to A's SIP
/// listener; the phone that follows the redirect is in the call. Each hears the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_dialling_different_processes_meet_on_the_session_s_host() {
    let (url, a, b, account, session) = two_processes().await;
    let redirecting = ServeConfig {
        sip_ingress: SipIngress::Redirect,
        ..ServeConfig::for_database(&url)
    };
    let c = spawn_app_with(&redirecting).await;
    let (first, t1) = participant(&a.control, &account).await;
    let (second, t2) = participant(&b.control, &account).await;
    let (third, t3) = participant(&c.control, &account).await;
    join_whole(&b.control, &account, session, [first, second, third]).await;
    let p1 = dial_ok(a.sip, &t1).await;
    let p2 = dial_ok(b.sip, &t2).await;
    assert_eq!(
        (p2.dialled(), p2.answered_by()),
        (b.sip, a.sip),
        "dialled at B, answered by the session's host through B"
    );
    let redirected = match dial(c.sip, &Dial::with_token(&t3)).await {
        Ok(_) => panic!("the redirecting process that does not host the session answered"),
        Err(r) => r,
    };
    assert_eq!(redirected.code, 302, "{redirected:?}");
    assert_eq!(
        redirected.redirect,
        Some(a.sip),
        "redirected to the host's SIP listener: {redirected:?}"
    );
    let p3 = dial_ok(a.sip, &t3).await;
    p1.play_tone(440.0);
    p2.play_tone(1000.0);
    p3.play_tone(1700.0);
    hears(&p1, 1000.0, "the first caller hears the proxied one").await;
    hears(&p1, 1700.0, "the first caller hears the redirected one").await;
    hears(&p2, 440.0, "the proxied caller hears the first").await;
    hears(&p3, 1000.0, "the redirected caller hears the proxied one").await;
    // Who is speaking: the host knows (a phone, from its decoded audio); the other process
    // says the session is hosted elsewhere rather than answer what it does not hold.
    eventually("the host has a dominant speaker", DEADLINE, || async {
        let s = a
            .control
            .active_speaker(&account, session)
            .await
            .expect("speaker at the host");
        !s.hosted_elsewhere
            && s.speaker
                .is_some_and(|s| s.phone && [first, second, third].contains(&s.participant))
    })
    .await;
    let elsewhere = b
        .control
        .active_speaker(&account, session)
        .await
        .expect("speaker at the other process");
    assert!(elsewhere.hosted_elsewhere, "{elsewhere:?}");
    assert!(elsewhere.speaker.is_none(), "{elsewhere:?}");
    // The proxied call's BYE goes to the host (its Contact): the host ends it.
    assert!(p2.hangup().await, "BYE sent");
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let heard = listen(&p1).await;
        if power_at(&heard, 1000.0) < 0.001 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the proxied caller hung up (BYE to the host): the first caller no longer hears it"
        );
    }

    // `patchbay cluster status` shows both processes alive, the host with the session and
    // both calls (their live rows are written just after their events).
    let status = || async {
        let text = patchbay::cli::cluster(patchbay::config::ClusterCommand::Status {
            json: true,
            database: patchbay::config::DatabaseArgs {
                database_url: Some(url.clone()),
                data_dir: None,
            },
        })
        .await
        .expect("cluster status");
        serde_json::from_str::<serde_json::Value>(&text).expect("JSON")
    };
    let host_id = a.control.instance().to_owned();
    eventually("the host's two calls are recorded", DEADLINE, || async {
        status().await.as_array().is_some_and(|list| {
            list.iter()
                .any(|p| p["process"] == host_id.as_str() && p["devices"] == 2)
        })
    })
    .await;
    let status = status().await;
    let of = |process: &str| {
        status
            .as_array()
            .and_then(|list| list.iter().find(|p| p["process"] == process))
            .cloned()
            .unwrap_or_else(|| panic!("{process} in {status}"))
    };
    let (host, other) = (of(a.control.instance()), of(b.control.instance()));
    assert_eq!(host["state"], "alive", "{status}");
    assert_eq!(other["state"], "alive", "{status}");
    assert_eq!(host["sessions"], 1, "{status}");
    assert_eq!(host["devices"], 2, "{status}");
    assert_eq!(other["sessions"], 0, "{status}");
    assert_eq!(host["sipAddress"], a.sip.to_string(), "{status}");
    drop((p1, p2, p3));
    c.stop().await.expect("stop C");
    b.stop().await.expect("stop B");
    a.stop().await.expect("stop A");
}

/// A process that starts beside a live one leaves its phone calls alone: only a process on the
/// same SIP address (a restarted one) takes stored calls over. Before, the newcomer took every
/// stored call for its predecessor's, failed to bind its RTP port (or, on another machine,
/// would have succeeded) and hung the live call up with a BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_starting_beside_a_live_one_leaves_its_calls_alone() {
    let (url, a, b, account, session) = two_processes().await;
    let (first, t1) = participant(&a.control, &account).await;
    let (second, t2) = participant(&a.control, &account).await;
    join_whole(&a.control, &account, session, [first, second]).await;
    let p1 = dial_ok(a.sip, &t1).await;
    let p2 = dial_ok(a.sip, &t2).await;
    p1.play_tone(440.0);
    p2.play_tone(1000.0);
    hears(&p1, 1000.0, "the first caller hears the second").await;
    hears(&p2, 440.0, "the second caller hears the first").await;
    // Both calls are stored (after their ACK) before the third process starts.
    eventually("both calls are stored", DEADLINE, || async {
        a.control.phone_calls().await.is_ok_and(|c| c.len() == 2)
    })
    .await;

    let c = spawn_app(&url).await;
    // The calls go on at A: heard both ways after C started, no BYE, still stored.
    hears(&p1, 1000.0, "the first caller still hears the second").await;
    hears(&p2, 440.0, "the second caller still hears the first").await;
    assert!(
        !p1.bye_received() && !p2.bye_received(),
        "a call of the live process was hung up by the one that started"
    );
    assert_eq!(
        c.control.phone_calls().await.map(|calls| calls.len()).ok(),
        Some(2),
        "the calls' records stay"
    );
    drop((p1, p2));
    c.stop().await.expect("stop C");
    b.stop().await.expect("stop B");
    a.stop().await.expect("stop A");
}

/// A process taken for dead while it runs (here the test's own control claims it, as the
/// reaper of a process alive does after 8 s without a beat, and writes its device's end)
/// learns it at its next beat and closes its devices, announcing nothing more: the backend
/// gets one `onDisconnect`, from the claimant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_taken_for_dead_closes_its_devices_without_a_second_end() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = fresh_postgres_url();
    let b = spawn_app(&url).await;
    let account = AccountId::parse("fenced").expect("id");
    b.control
        .create_account(account.clone())
        .await
        .expect("account");
    let (p, mut ws) = connected_device(&b.control, &account, &b, "fenced").await;

    // The claimant: a control on the same database, its events recorded in the outbox.
    let claimant = Control::new(std::sync::Arc::new(
        patchbay::store::open(&url).await.expect("store"),
    ))
    .await
    .expect("control");
    let mut feed = claimant.webhook_feed();
    let recorder = claimant.clone();
    tokio::spawn(async move {
        while let Some(item) = feed.recv().await {
            let ok = matches!(
                recorder
                    .record_events(&[&item.event], item.generation, 1)
                    .await,
                Ok(patchbay::control::Recording::Written(_))
            );
            if let Some(tx) = item.recorded {
                let _ = tx.send(ok);
            }
            recorder.event_settled();
        }
    });
    // A claimant reaps only while its own beats succeed; far in the future, every other
    // process is dead to it.
    claimant.heartbeat(1).await.expect("beat");
    let reaped = claimant.reap_dead(i64::MAX / 4, None).await.expect("reap");
    assert_eq!(reaped, 1, "B's device is accounted for");

    // B's next beat (every 2 s) finds its row gone: the device is closed.
    let closed = tokio::time::timeout(DEADLINE * 2, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("B closes the device of a process taken for dead");
    // 1013: the SDK reconnects (on 1000 it would not), as a new device.
    assert_eq!(
        closed,
        Some((1013, patchbay::control::TAKEN_FOR_DEAD.to_owned()))
    );
    // The close handshake completes (the client answers, the server drops the connection and
    // reports its end); what it reports would be recorded within moments.
    while let Ok(Some(_)) = tokio::time::timeout(DEADLINE, ws.next()).await {}
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    eventually("every event settled", DEADLINE, || async {
        b.control.events_unsettled() == 0 && claimant.events_unsettled() == 0
    })
    .await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let written: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM webhook_outbox WHERE participant_id = $1 ORDER BY seq",
    )
    .bind(p.to_string())
    .fetch_all(&mut conn)
    .await
    .expect("outbox");
    assert_eq!(
        written,
        ["onConnect", "onDisconnect"],
        "one end, the claimant's"
    );
    b.stop().await.expect("stop B");
}

/// A TCP forwarder in front of PostgreSQL for one process: `cut` ends every connection through
/// it and refuses new ones (the process alone loses the database), `restore` lets them in again.
struct Link {
    addr: SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    async fn to(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let link = Link {
            addr: listener.local_addr().expect("addr"),
            open: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            conns: std::sync::Arc::default(),
        };
        let (open, conns) = (link.open.clone(), link.conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(task.abort_handle());
            }
        });
        link
    }

    fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            conn.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Issue 20's fence when one process alone loses the database: B, cut off for longer than its
/// lease, is taken for dead by A, which writes the end of B's device. B's own end of that device
/// (raised while cut off, held back by its recorder, which keeps retrying) is never written,
/// whether B learns it was taken for dead from the store's refusal or from its next beat (which
/// registers it anew): the backend gets one `onDisconnect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_cut_off_from_the_database_writes_no_second_end_when_it_comes_back() {
    use sqlx::Connection;
    let url = fresh_postgres_url();
    let (server, database) = url
        .strip_prefix("postgres://postgres@")
        .and_then(|rest| rest.split_once('/'))
        .expect("a postgres://postgres@HOST:PORT/DB url");
    let target: SocketAddr = tokio::net::lookup_host(server)
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let link = Link::to(target).await;
    let a = spawn_app(&url).await;
    let b = spawn_app(&format!("postgres://postgres@{}/{database}", link.addr)).await;
    let account = AccountId::parse("cutoff").expect("id");
    a.control
        .create_account(account.clone())
        .await
        .expect("account");
    let (p, ws) = connected_device(&a.control, &account, &b, "cut").await;

    link.cut();
    // The device leaves while B cannot write: its end waits in B's recorder.
    drop(ws);
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    // A takes B for dead (bounded against hanging: A looks every 2 s once it has beaten for
    // 8 s, and B, alive after A started, is dead 8 s after its last beat) and writes the
    // device's end.
    let mut reaped = false;
    for _ in 0..900 {
        let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM server_instances")
            .fetch_one(&mut conn)
            .await
            .expect("instances");
        if instances == 1 && outbox_of(&mut conn, p).await.len() == 2 {
            reaped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(reaped, "A took B for dead and wrote the device's end");
    assert!(
        b.control.events_unsettled() > 0,
        "B's own end of the device is still waiting"
    );

    link.restore();
    // B comes back: its held-back end is dropped, not written.
    eventually("B's events settled", DEADLINE * 3, || async {
        b.control.events_unsettled() == 0
    })
    .await;
    eventually("B registered again", DEADLINE * 3, || async {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM server_instances")
            .fetch_one(&mut conn)
            .await
            .expect("instances")
            == 2
    })
    .await;
    assert_eq!(outbox_of(&mut conn, p).await, ["onConnect", "onDisconnect"]);
    b.stop().await.expect("stop B");
    a.stop().await.expect("stop A");
}

/// A participant of `account` with a `callbackUrl` (so its events go to the outbox) and these
/// publish permissions (`None`: the default), with its token.
async fn hooked_participant(
    maker: &Control,
    account: &AccountId,
    publish_permissions: Option<MediaKinds>,
) -> (patchbay::domain::Participant, String) {
    maker
        .create_participant(
            account,
            NewParticipant {
                publish_permissions,
                callback_url: Some(
                    patchbay::domain::CallbackUrl::parse("http://127.0.0.1:9/hook")
                        .expect("callback"),
                ),
                ..Default::default()
            },
        )
        .await
        .expect("participant")
}

/// The events of `participant` in the outbox, in order.
async fn outbox_of(conn: &mut sqlx::PgConnection, participant: ParticipantId) -> Vec<String> {
    sqlx::query_scalar("SELECT event FROM webhook_outbox WHERE participant_id = $1 ORDER BY seq")
        .bind(participant.to_string())
        .fetch_all(conn)
        .await
        .expect("outbox")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A participant of `account` (created through `maker`) with a `callbackUrl`, and a device of
/// it connected to `host` as `unique_id`, its events settled there.
async fn connected_device(
    maker: &Control,
    account: &AccountId,
    host: &RunningApp,
    unique_id: &str,
) -> (ParticipantId, Ws) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (p, token) = hooked_participant(maker, account, None).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/v3/?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={unique_id}",
        host.http
    ))
    .await
    .expect("upgrade");
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":1,"method":"nothing"}"#.into(),
    ))
    .await
    .expect("probe");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"id\":1") => break,
            Some(Ok(_)) => continue,
            other => panic!("not connected: {other:?}"),
        }
    }
    // The host's live row is written once its events are settled.
    eventually("the host's events settled", DEADLINE, || async {
        host.control.events_unsettled() == 0
    })
    .await;
    (p.id, ws)
}

/// A call left up by a graceful stop (for a successor on the same address) that no successor
/// takes over is ended by the process still serving on the database, once its wait is over:
/// the phone gets a BYE in its dialog, the participant one `onDisconnect` and one
/// `onCallEnded`, and the record goes. Without this, the phone kept a call nobody served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_up_with_no_successor_is_ended_by_a_live_process() {
    let (url, a, b, account, session) =
        two_processes_with(|config| config.phone_successor_wait = 2).await;
    let (p, token) = hooked_participant(&a.control, &account, Some(MediaKinds::AUDIO)).await;
    join_whole(&a.control, &account, session, [p.id]).await;
    let phone = dial_ok(a.sip, &token).await;
    eventually("the call is stored", DEADLINE, || async {
        b.control
            .phone_calls()
            .await
            .is_ok_and(|c| c.iter().any(|c| c.participant == p.id))
    })
    .await;

    a.stop().await.expect("stop A");
    // An absence, over a window: a BYE the stop sent would arrive in it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!phone.bye_received(), "the graceful stop left the call up");
    assert_eq!(
        b.control.phone_calls().await.map(|c| c.len()).ok(),
        Some(1),
        "the call is stored for a successor"
    );

    // No successor comes: B ends it after the wait (2 s) at its next look (every 5 s).
    eventually(
        "the phone gets a BYE from B",
        DEADLINE + DEADLINE,
        || async { phone.bye_received() },
    )
    .await;
    assert_eq!(
        b.control.phone_calls().await.map(|c| c.len()).ok(),
        Some(0),
        "the record is gone"
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    eventually("the ends are in the outbox", DEADLINE, || async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect");
        outbox_of(&mut conn, p.id)
            .await
            .iter()
            .any(|e| e == "onCallEnded")
    })
    .await;
    // Another look or two at the stored calls: nothing is ended twice.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let events = outbox_of(&mut conn, p.id).await;
    let count = |name: &str| events.iter().filter(|e| *e == name).count();
    assert_eq!(
        (
            count("onConnect"),
            count("onDisconnect"),
            count("onCallEnded")
        ),
        (1, 1, 1),
        "one connection, one end: {events:?}"
    );
    assert_eq!(
        events.iter().rev().take(2).rev().collect::<Vec<_>>(),
        ["onDisconnect", "onCallEnded"],
        "the ends come last: {events:?}"
    );
    b.stop().await.expect("stop B");
}
