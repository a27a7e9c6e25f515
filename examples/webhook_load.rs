//! Webhook outbox load: devices of participants with a `callbackUrl` connect and disconnect
//! over the real WebSocket in a loop (each cycle raises `onConnect` and `onDisconnect`), and the
//! webhooks go to a receiver this tool runs on loopback.
//!
//! ```text
//! cargo run --release --example webhook_load -- --url http://127.0.0.1:PORT \
//!     --account ID --username U --password P --receiver local --duration 20s
//! ```
//!
//! Receivers (`--receiver`):
//! - `local`: answers every POST with 204 at once and counts them. After the churn stops, the
//!   tool waits until every event raised has been delivered and reports events per second
//!   delivered (first to last delivery) and how long the backlog took to drain.
//! - `hang`: accepts connections and never answers (every attempt runs into the server's
//!   attempt timeout).
//! - `refuse`: a port with nothing listening (every attempt is refused).
//!
//! With `hang` or `refuse` it only raises events for `--duration` (run `rest_load` beside it
//! to see whether a dead receiver costs the REST API anything). `--cycles-per-sec 0` (default)
//! churns as fast as `--devices` connections in parallel allow.
//!
//! Output: a human-readable summary, then one line `RESULT {json}` for scripts. Traffic goes
//! only to 127.0.0.1.
#![allow(clippy::disallowed_methods)] // a load generator: real clocks, sockets and tasks

#[path = "support/mod.rs"]
mod support;
use support::parse_duration;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Receiver {
    Local,
    Hang,
    Refuse,
}

#[derive(Parser, Debug)]
#[command(about = "Webhook outbox load for patchbay: device churn raising webhooks")]
struct Args {
    /// Base URL of the running server; must be http://127.0.0.1:PORT.
    #[arg(long)]
    url: String,
    #[arg(long)]
    account: String,
    #[arg(long)]
    username: String,
    #[arg(long)]
    password: String,
    /// Where the webhooks go.
    #[arg(long, value_enum, default_value = "local")]
    receiver: Receiver,
    /// How long devices churn, e.g. 20s (a bare number means seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Participants (each with one device churning at a time).
    #[arg(long, default_value_t = 64)]
    devices: usize,
    /// Connect+disconnect cycles per second over all devices; 0: as fast as they go.
    #[arg(long, default_value_t = 0.0)]
    cycles_per_sec: f64,
    /// Bound on waiting for the backlog to drain (receiver `local`).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Free-form label copied into the RESULT line (e.g. the backend).
    #[arg(long, default_value = "")]
    label: String,
}

/// What the local receiver saw.
#[derive(Default)]
struct Deliveries {
    count: AtomicU64,
    first_last: Mutex<Option<(Instant, Instant)>>,
}

async fn local_receiver(deliveries: Arc<Deliveries>) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            |axum::extract::State(d): axum::extract::State<Arc<Deliveries>>| async move {
                d.count.fetch_add(1, Ordering::SeqCst);
                let now = Instant::now();
                if let Ok(mut fl) = d.first_last.lock() {
                    *fl = Some(fl.map_or((now, now), |(first, _)| (first, now)));
                }
                axum::http::StatusCode::NO_CONTENT
            },
        ),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.with_state(deliveries)).await;
    });
    Ok(format!("http://{addr}/hook"))
}

/// Accepts connections and never answers.
async fn hanging_receiver() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(format!("http://{addr}/hook"))
}

/// A loopback port with nothing listening.
fn refusing_receiver() -> anyhow::Result<String> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    Ok(format!("http://{addr}/hook"))
}

/// One connect + disconnect of a device: `onConnect` then `onDisconnect`.
async fn cycle(ws_base: &str, token: &str, unique_id: &str) -> anyhow::Result<()> {
    let url = format!(
        "{ws_base}/v3/?token={token}&client=browser&sdkVersion=0.12.0-beta.1&uniqueId={unique_id}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    ws.send(Message::Text(
        r#"{"jsonrpc":"2.0","id":"1","method":"ping","params":{}}"#.into(),
    ))
    .await?;
    // The answer to the ping: the device is connected (and announced) by then.
    while let Some(m) = ws.next().await {
        if matches!(m?, Message::Text(_)) {
            break;
        }
    }
    ws.close(None).await?;
    while let Some(Ok(_)) = ws.next().await {}
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.url.trim_end_matches('/').to_owned();
    anyhow::ensure!(
        base.starts_with("http://127.0.0.1:"),
        "--url must be http://127.0.0.1:PORT"
    );
    let ws_base = base.replacen("http://", "ws://", 1);
    let deliveries = Arc::new(Deliveries::default());
    let hook = match args.receiver {
        Receiver::Local => local_receiver(deliveries.clone()).await?,
        Receiver::Hang => hanging_receiver().await?,
        Receiver::Refuse => refusing_receiver()?,
    };

    let http = reqwest::Client::new();
    let mut tokens = Vec::with_capacity(args.devices);
    for _ in 0..args.devices {
        let v: Value = http
            .post(format!("{base}/v1/accounts/{}/participants", args.account))
            .basic_auth(&args.username, Some(&args.password))
            .json(&json!({ "callbackUrl": hook }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = v["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no token in {v}"))?;
        tokens.push(token.to_owned());
    }

    let cycles = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Each device paces itself at its share of the rate (open loop per device).
    let per_device = (args.cycles_per_sec > 0.0)
        .then(|| Duration::from_secs_f64(args.devices as f64 / args.cycles_per_sec));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (ws_base, cycles, failures, stop) = (
            ws_base.clone(),
            cycles.clone(),
            failures.clone(),
            stop.clone(),
        );
        workers.spawn(async move {
            let mut tick = per_device.map(tokio::time::interval);
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                n += 1;
                match cycle(&ws_base, &token, &format!("load-{i}-{n}")).await {
                    Ok(()) => cycles.fetch_add(1, Ordering::SeqCst),
                    Err(_) => failures.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
    }
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}
    let churned = started.elapsed();
    let cycles = cycles.load(Ordering::SeqCst);
    let failures = failures.load(Ordering::SeqCst);
    let raised = 2 * cycles;
    println!(
        "churn: {cycles} connect+disconnect cycles ({raised} events) in {:.1} s = {:.0} events/s raised; {failures} failed cycles",
        churned.as_secs_f64(),
        raised as f64 / churned.as_secs_f64()
    );

    let mut result = json!({
        "label": args.label,
        "receiver": format!("{:?}", args.receiver).to_lowercase(),
        "devices": args.devices,
        "cycles": cycles,
        "failed_cycles": failures,
        "events_raised": raised,
        "raise_per_sec": raised as f64 / churned.as_secs_f64(),
    });
    if args.receiver == Receiver::Local {
        let deadline = Instant::now() + args.drain_timeout;
        while deliveries.count.load(Ordering::SeqCst) < raised && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let drained = started.elapsed().saturating_sub(churned);
        let delivered = deliveries.count.load(Ordering::SeqCst);
        let span = deliveries
            .first_last
            .lock()
            .ok()
            .and_then(|fl| *fl)
            .map(|(first, last)| last.duration_since(first).as_secs_f64())
            .unwrap_or(0.0);
        let rate = if span > 0.0 {
            delivered as f64 / span
        } else {
            0.0
        };
        println!(
            "delivered: {delivered} of {raised} events; {rate:.0} events/s from the first delivery to the last; backlog drained {:.1} s after the churn stopped",
            drained.as_secs_f64()
        );
        result["delivered"] = json!(delivered);
        result["deliver_per_sec"] = json!(rate);
        result["drain_s_after_churn"] = json!(drained.as_secs_f64());
        result["drained"] = json!(delivered >= raised);
    }
    println!("RESULT {result}");
    if args.receiver == Receiver::Local && result["drained"] != json!(true) {
        anyhow::bail!(
            "not every event was delivered within {:?} of the churn's end",
            args.drain_timeout
        );
    }
    Ok(())
}
