//! PUT→media latency with one serving process and with three on one PostgreSQL (issue 20):
//! how long after a backend's `PUT …/participants/{p}/subscriptions` the change is heard.
//!
//! Per mode the tool starts the processes in-process (the test kit's `spawn_app`, every
//! listener on 127.0.0.1 port 0) on a fresh database, creates an account, a session and two
//! participants, and dials both into the first process (which so hosts the session) with the
//! test phone: the publisher plays a 1000 Hz tone, the listener hears nothing at first. Then,
//! `--changes` times, the listener is subscribed to the publisher over REST and the tool
//! measures from the moment the request is sent to the first 20 ms of the listener's received
//! audio that carries the tone; then it is unsubscribed, and the tool measures until the tone
//! is gone. With one process the `PUT` goes to it; with three it goes to the third, which does
//! not host the session: the change reaches the host through the database's doorbell
//! (`NOTIFY`, then a re-read).
//!
//! Both figures include what a phone adds on its side (the bridge's mixing and 20 ms packets,
//! the phone's own receive path, and this tool's 2 ms polling), the same in both modes; the
//! difference between the modes is the cost of the cluster.
//!
//! ```sh
//! PATCHBAY_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run --release --example cluster_latency -- --changes 50
//! ```
//!
//! Needs PostgreSQL (`PATCHBAY_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`,
//! trust auth): each mode creates a database of its own there.
#![allow(clippy::disallowed_methods)] // a tool: it reads the clock and sleeps

use std::time::{Duration, Instant};

use patchbay::domain::{AccountId, MediaKinds};
use patchbay_testkit::app::{spawn_app, RunningApp};
use patchbay_testkit::db::fresh_postgres_url;
use patchbay_testkit::phone_ua::{dial, power_at, Dial, Phone};
use serde_json::json;

/// The tone the publisher plays.
const TONE_HZ: f64 = 1000.0;
/// 20 ms of 8 kHz audio.
const WINDOW: usize = 160;
/// The tone is there when its power in the last window is above this, gone below the other.
const PRESENT: f64 = 0.05;
const ABSENT: f64 = 0.005;
/// A change not heard within this is reported as lost.
const GIVE_UP: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut changes = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--changes" => {
                changes = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("--changes N"))?
            }
            "-h" | "--help" => {
                println!("cluster_latency [--changes N]  (see the module docs)");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    for processes in [1usize, 3] {
        let (on, off) = run(processes, changes).await?;
        report(processes, "subscribe → tone heard", &on);
        report(processes, "unsubscribe → tone gone", &off);
    }
    Ok(())
}

/// One mode: `processes` processes, `changes` subscribe/unsubscribe pairs. The latencies of
/// the subscribes and of the unsubscribes.
async fn run(processes: usize, changes: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let url = fresh_postgres_url();
    let mut apps: Vec<RunningApp> = Vec::new();
    for _ in 0..processes {
        apps.push(spawn_app(&url).await);
    }
    let host = &apps[0];
    let door = apps.last().map_or(host.http, |a| a.http);
    let account = AccountId::parse("latency")?;
    let creds = host.control.create_account(account.clone()).await?;
    let session = host.control.create_session(&account, None).await?.id;
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (p, token) = host
            .control
            .create_participant(
                &account,
                patchbay::control::NewParticipant {
                    publish_permissions: Some(MediaKinds::AUDIO),
                    ..Default::default()
                },
            )
            .await?;
        host.control
            .add_member(
                &account,
                session,
                p.id,
                Some(patchbay_testkit::rules::only(&[])),
            )
            .await?;
        ids.push(p.id);
        tokens.push(token);
    }
    let publisher = dial_in(host, &tokens[0]).await?;
    let listener = dial_in(host, &tokens[1]).await?;
    publisher.play_tone(TONE_HZ);
    let http = reqwest::Client::new();
    let put = |participants: Vec<String>| {
        let request = http
            .put(format!(
                "http://{door}/v1/accounts/{account}/sessions/{session}/participants/{}/subscriptions",
                ids[1]
            ))
            .basic_auth(&creds.username, Some(&creds.password))
            // No `sessionId`: that would subscribe to the whole session.
            .json(&json!({
                "participants": participants
                    .iter()
                    .map(|p| json!({"participantId": p}))
                    .collect::<Vec<_>>(),
            }));
        async move {
            let status = request.send().await?.status();
            anyhow::ensure!(status.is_success(), "PUT subscriptions: {status}");
            Ok::<(), anyhow::Error>(())
        }
    };
    // Silence first.
    wait_for(&listener, false).await?;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..changes {
        let start = Instant::now();
        listener.clear_heard();
        put(vec![ids[0].to_string()]).await?;
        wait_for(&listener, true).await?;
        on.push(start.elapsed());
        let start = Instant::now();
        listener.clear_heard();
        put(Vec::new()).await?;
        wait_for(&listener, false).await?;
        off.push(start.elapsed());
    }
    drop((publisher, listener));
    for app in apps.into_iter().rev() {
        app.stop().await?;
    }
    Ok((on, off))
}

async fn dial_in(app: &RunningApp, token: &str) -> anyhow::Result<Phone> {
    dial(app.sip, &Dial::with_token(token))
        .await
        .map_err(|r| anyhow::anyhow!("call refused: {r:?}"))
}

/// Polls what `phone` has heard since it was last cleared until its newest 20 ms carry the
/// tone (`present`) or do not.
async fn wait_for(phone: &Phone, present: bool) -> anyhow::Result<()> {
    let give_up = Instant::now() + GIVE_UP;
    loop {
        let heard = phone.heard();
        if heard.len() >= WINDOW {
            let power = power_at(&heard[heard.len() - WINDOW..], TONE_HZ);
            if (present && power > PRESENT) || (!present && power < ABSENT) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "the tone was not {} within {GIVE_UP:?}",
            if present { "heard" } else { "gone" }
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn report(processes: usize, what: &str, samples: &[Duration]) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((ms.len() as f64 - 1.0) * q).round() as usize;
        ms.get(i).copied().unwrap_or(f64::NAN)
    };
    println!(
        "{processes} process(es), {what}: n={} p50={:.0} ms p90={:.0} ms p99={:.0} ms max={:.0} ms",
        ms.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}
