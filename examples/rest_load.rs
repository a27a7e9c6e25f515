//! Open-loop, fixed-rate REST load generator for a running patchbay server.
//!
//! Requests are scheduled at fixed intervals whatever the response times (open loop), and each
//! request's latency is measured from its *scheduled* send time, so a server that falls behind
//! is charged for the queueing it causes (no coordinated omission). At most `--max-in-flight`
//! requests are on the wire at once; scheduled requests beyond that wait for a slot, and the
//! wait counts as latency.
//!
//! Before the measured run it builds a pool of sessions with members and subscriptions, plus a
//! few "floater" participants (each tied to one pool session) used for add/remove pairs; the
//! mix is designed so that no request should legitimately fail (no 409s: a floater is only
//! added by one task at a time and sessions stay far below the 20-member limit).
//!
//! ```text
//! cargo run --release --example rest_load -- --url http://127.0.0.1:PORT \
//!     --account ID --username U --password P --rate 1000 --duration 20s --warmup 3s \
//!     [--server-pid PID] [--label sqlite]
//! ```
//!
//! Output: a human-readable report, then one line `RESULT {json}` for scripts.
//! Traffic goes only to 127.0.0.1 (other hosts are refused).
#![allow(clippy::disallowed_methods)] // a load generator: real clocks and tasks

#[path = "support/mod.rs"]
mod support;

// The /proc readings the media load tools use too (the rest of the module is theirs).
#[path = "support/load.rs"]
#[allow(dead_code)]
mod load;
use load::{clock_ticks, loadavg, stat_cpu_seconds};
use support::parse_duration;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "Open-loop fixed-rate REST load generator for patchbay")]
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
    /// Target request rate (requests per second, add/remove pairs count as two).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured duration, e.g. 20s, 500ms, 1m (a bare number means seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up duration at the same rate, not measured.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Upper bound on requests on the wire at once.
    #[arg(long, default_value_t = 512)]
    max_in_flight: usize,
    /// Pool: number of sessions.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Pool: members per session (each with subscriptions).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Pool: spare participants per session used for add/remove pairs.
    #[arg(long, default_value_t = 4)]
    floaters: usize,
    /// Server process id: report its CPU time over the measured run (from /proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free-form label copied into the RESULT line (e.g. the backend).
    #[arg(long, default_value = "")]
    label: String,
    /// Per-request timeout.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    timeout: Duration,
    /// How long to wait for in-flight requests after the last one is scheduled.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    drain: Duration,
    /// Seed for the pseudo-random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One kind of HTTP request, for per-operation statistics.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Op {
    GetParticipant,
    ListMembers,
    GetSubscriptions,
    PutSubscriptions,
    PostParticipant,
    PostSession,
    AddMember,
    RemoveMember,
    GetRoutes,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::GetParticipant,
        Op::ListMembers,
        Op::GetSubscriptions,
        Op::PutSubscriptions,
        Op::PostParticipant,
        Op::PostSession,
        Op::AddMember,
        Op::RemoveMember,
        Op::GetRoutes,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::GetParticipant => "get_participant",
            Op::ListMembers => "list_session_participants",
            Op::GetSubscriptions => "get_subscriptions",
            Op::PutSubscriptions => "put_subscriptions",
            Op::PostParticipant => "post_participant",
            Op::PostSession => "post_session",
            Op::AddMember => "put_add_participant",
            Op::RemoveMember => "delete_remove_participant",
            Op::GetRoutes => "get_routes",
        }
    }
}

/// One scheduled unit of work. `AddRemove` issues two requests (PUT, then DELETE).
#[derive(Clone, Copy, Debug)]
enum Slot {
    Single(Op),
    AddRemove,
}

/// The mix, as shares of *requests* (percent).
const MIX: [(Slot, f64); 8] = [
    (Slot::Single(Op::GetParticipant), 40.0),
    (Slot::Single(Op::ListMembers), 15.0),
    (Slot::Single(Op::GetSubscriptions), 10.0),
    (Slot::Single(Op::PutSubscriptions), 10.0),
    (Slot::Single(Op::PostParticipant), 10.0),
    (Slot::Single(Op::PostSession), 5.0),
    (Slot::AddRemove, 5.0),
    (Slot::Single(Op::GetRoutes), 5.0),
];

fn requests_per_slot(slot: Slot) -> f64 {
    match slot {
        Slot::Single(_) => 1.0,
        Slot::AddRemove => 2.0,
    }
}

/// Slot-selection table: weights converted from request shares to slot shares.
struct Mixer {
    cumulative: Vec<(f64, Slot)>,
    total: f64,
    /// Mean number of requests per slot.
    requests_per_slot: f64,
}

impl Mixer {
    fn new() -> Mixer {
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        let mut reqs = 0.0;
        for (slot, share) in MIX {
            let w = share / requests_per_slot(slot);
            total += w;
            reqs += share;
            cumulative.push((total, slot));
        }
        Mixer {
            cumulative,
            total,
            requests_per_slot: reqs / total,
        }
    }

    fn pick(&self, r: u64) -> Slot {
        let x = (r >> 11) as f64 / (1u64 << 53) as f64 * self.total;
        self.cumulative
            .iter()
            .find(|(c, _)| x < *c)
            .map(|(_, s)| *s)
            .unwrap_or(self.cumulative.last().expect("non-empty mix").1)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

struct PoolSession {
    id: String,
    members: Vec<String>,
}

struct Floater {
    id: String,
    session: usize,
}

/// Outcome of one request.
enum Outcome {
    Status(StatusCode),
    Transport(String),
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self, Outcome::Status(s) if s.is_success())
    }
    fn key(&self) -> String {
        match self {
            Outcome::Status(s) => s.as_u16().to_string(),
            Outcome::Transport(kind) => format!("transport:{kind}"),
        }
    }
}

#[derive(Default)]
struct OpStats {
    latencies_us: Vec<u64>,
    errors: u64,
}

#[derive(Default)]
struct Recorder {
    per_op: HashMap<Op, OpStats>,
    errors: BTreeMap<String, u64>,
    last_completion: Option<Instant>,
}

struct Ctx {
    client: reqwest::Client,
    /// `http://127.0.0.1:PORT/v1/accounts/ID`
    base: String,
    username: String,
    password: String,
    sessions: Vec<PoolSession>,
    floaters: Vec<Floater>,
    floater_tx: tokio::sync::mpsc::UnboundedSender<usize>,
    floater_rx: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<usize>>,
    in_flight: Semaphore,
    put_subs_counter: AtomicU64,
    created_counter: AtomicU64,
    sent_measured: AtomicU64,
    recorder: Mutex<Recorder>,
    seed: u64,
}

impl Ctx {
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Outcome {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .basic_auth(&self.username, Some(&self.password))
            .header("accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(_) => Outcome::Status(status),
                    Err(e) => Outcome::Transport(classify(&e)),
                }
            }
            Err(e) => Outcome::Transport(classify(&e)),
        }
    }

    fn record(&self, op: Op, since: Instant, outcome: &Outcome, measured: bool) {
        if !measured {
            return;
        }
        let now = Instant::now();
        let us = now.saturating_duration_since(since).as_micros() as u64;
        let mut rec = self.recorder.lock().unwrap_or_else(|e| e.into_inner());
        let ok = outcome.ok();
        let stats = rec.per_op.entry(op).or_default();
        stats.latencies_us.push(us);
        if !ok {
            stats.errors += 1;
            *rec.errors.entry(outcome.key()).or_default() += 1;
        }
        rec.last_completion = Some(rec.last_completion.map_or(now, |t| t.max(now)));
    }
}

fn classify(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else if e.is_body() || e.is_decode() {
        "body".into()
    } else if e.is_request() {
        "request".into()
    } else {
        "other".into()
    }
}

/// Pool-building request that must succeed; returns the parsed JSON body (or `Null`).
async fn must(
    ctx: &Ctx,
    method: Method,
    path: String,
    body: Option<Value>,
) -> Result<Value, String> {
    let mut req = ctx
        .client
        .request(method.clone(), format!("{}{}", ctx.base, path))
        .basic_auth(&ctx.username, Some(&ctx.password))
        .header("accept", "application/json");
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{method} {path}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{method} {path}: bad JSON: {e}"))
}

type Call = (Method, String, Option<Value>);

/// Runs the calls with bounded concurrency; results in input order.
async fn parallel(ctx: &Arc<Ctx>, calls: Vec<Call>) -> Result<Vec<Value>, String> {
    let limit = Arc::new(Semaphore::new(16));
    let mut set = JoinSet::new();
    let n = calls.len();
    for (i, (m, p, b)) in calls.into_iter().enumerate() {
        let ctx = ctx.clone();
        let limit = limit.clone();
        set.spawn(async move {
            let _permit = limit.acquire().await.expect("semaphore open");
            (i, must(&ctx, m, p, b).await)
        });
    }
    let mut out = vec![Value::Null; n];
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| format!("setup task: {e}"))?;
        out[i] = r?;
    }
    Ok(out)
}

fn id_of(v: &Value, pointer: &str) -> Result<String, String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("response without {pointer}: {v}"))
}

/// Subscription rule `k` for member `j` of a session: even `k` whole-session, odd `k` an
/// explicit list of two other members (one with a stream-alias filter).
fn subscriptions_body(session: &PoolSession, j: usize, k: u64) -> Value {
    let m = session.members.len();
    if k.is_multiple_of(2) || m < 2 {
        json!({ "sessionId": session.id })
    } else {
        let a = &session.members[(j + 1) % m];
        let b = &session.members[(j + 2) % m];
        let mut list = vec![json!({ "participantId": a })];
        if b != a && (j + 2) % m != j {
            list.push(json!({ "participantId": b, "streamAliases": ["camera"] }));
        }
        json!({ "participants": list })
    }
}

fn participant_body(tag: &str) -> Value {
    json!({ "tag": tag, "publishPermissions": ["AUDIO", "VIDEO"], "deviceApiVersion": "V3" })
}

struct Setup {
    sessions: Vec<PoolSession>,
    floaters: Vec<Floater>,
}

async fn build_pool(ctx: &Arc<Ctx>, args: &Args) -> Result<Setup, String> {
    let calls = (0..args.sessions)
        .map(|i| {
            (
                Method::POST,
                "/sessions".to_owned(),
                Some(json!({ "tag": format!("load-pool-{i}") })),
            )
        })
        .collect();
    let session_ids = parallel(ctx, calls)
        .await?
        .iter()
        .map(|v| id_of(v, "/id"))
        .collect::<Result<Vec<_>, _>>()?;
    let per_session = args.members + args.floaters;
    let calls = (0..args.sessions * per_session)
        .map(|i| {
            (
                Method::POST,
                "/participants".to_owned(),
                Some(participant_body(&format!("load-pool-{i}"))),
            )
        })
        .collect();
    let participant_ids = parallel(ctx, calls)
        .await?
        .iter()
        .map(|v| id_of(v, "/participant/id"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sessions = Vec::new();
    let mut floaters = Vec::new();
    for (s, id) in session_ids.into_iter().enumerate() {
        let ids = &participant_ids[s * per_session..(s + 1) * per_session];
        sessions.push(PoolSession {
            id,
            members: ids[..args.members].to_vec(),
        });
        floaters.extend(ids[args.members..].iter().map(|id| Floater {
            id: id.clone(),
            session: s,
        }));
    }
    let mut calls = Vec::new();
    for session in &sessions {
        for (j, p) in session.members.iter().enumerate() {
            calls.push((
                Method::PUT,
                format!("/sessions/{}/participants/{p}", session.id),
                Some(subscriptions_body(session, j, j as u64)),
            ));
        }
    }
    parallel(ctx, calls).await?;
    if let Some(s) = sessions.first() {
        let routes = must(ctx, Method::GET, format!("/sessions/{}/routes", s.id), None).await?;
        if routes.is_null() {
            return Err("GET routes returned no body".into());
        }
    }
    Ok(Setup { sessions, floaters })
}

/// One scheduled unit of the workload.
async fn run_slot(ctx: Arc<Ctx>, slot: Slot, r: u64, scheduled: Instant, measured: bool) {
    let n = ctx.sessions.len() as u64;
    let s = &ctx.sessions[(r % n) as usize];
    let m = s.members.len() as u64;
    let j = ((r >> 20) % m) as usize;
    let member = &s.members[j];
    match slot {
        Slot::Single(op) => {
            let (method, path, body) = match op {
                Op::GetParticipant => (Method::GET, format!("/participants/{member}"), None),
                Op::ListMembers => (
                    Method::GET,
                    format!("/sessions/{}/participants", s.id),
                    None,
                ),
                Op::GetSubscriptions => (
                    Method::GET,
                    format!("/sessions/{}/participants/{member}/subscriptions", s.id),
                    None,
                ),
                Op::PutSubscriptions => {
                    let k = ctx.put_subs_counter.fetch_add(1, Ordering::Relaxed);
                    (
                        Method::PUT,
                        format!("/sessions/{}/participants/{member}/subscriptions", s.id),
                        Some(subscriptions_body(s, j, k)),
                    )
                }
                Op::PostParticipant => {
                    let k = ctx.created_counter.fetch_add(1, Ordering::Relaxed);
                    (
                        Method::POST,
                        "/participants".to_owned(),
                        Some(participant_body(&format!("load-{}-{k}", ctx.seed))),
                    )
                }
                Op::PostSession => {
                    let k = ctx.created_counter.fetch_add(1, Ordering::Relaxed);
                    (
                        Method::POST,
                        "/sessions".to_owned(),
                        Some(json!({ "tag": format!("load-{}-{k}", ctx.seed) })),
                    )
                }
                Op::GetRoutes => (Method::GET, format!("/sessions/{}/routes", s.id), None),
                Op::AddMember | Op::RemoveMember => unreachable!("pairs are Slot::AddRemove"),
            };
            let _permit = ctx.in_flight.acquire().await.expect("semaphore open");
            if measured {
                ctx.sent_measured.fetch_add(1, Ordering::Relaxed);
            }
            let outcome = ctx.send(method, &path, body).await;
            ctx.record(op, scheduled, &outcome, measured);
        }
        Slot::AddRemove => {
            // A floater is used by one task at a time (so never a 409 for "member of another
            // session"), and each is tied to one session (so sessions stay far below 20).
            // Waiting for a free floater counts as latency, like waiting for an in-flight slot.
            let fi = {
                let mut rx = ctx.floater_rx.lock().await;
                match rx.recv().await {
                    Some(i) => i,
                    None => return,
                }
            };
            let floater = &ctx.floaters[fi];
            let session = &ctx.sessions[floater.session];
            let path = format!("/sessions/{}/participants/{}", session.id, floater.id);
            let _permit = ctx.in_flight.acquire().await.expect("semaphore open");
            if measured {
                ctx.sent_measured.fetch_add(1, Ordering::Relaxed);
            }
            let body = json!({ "sessionId": session.id });
            let added = ctx.send(Method::PUT, &path, Some(body)).await;
            ctx.record(Op::AddMember, scheduled, &added, measured);
            let sent_at = Instant::now();
            if measured {
                ctx.sent_measured.fetch_add(1, Ordering::Relaxed);
            }
            let removed = ctx.send(Method::DELETE, &path, None).await;
            ctx.record(Op::RemoveMember, sent_at, &removed, measured);
            if removed.ok() {
                // Only a floater known to be out of every session goes back to the pool.
                let _ = ctx.floater_tx.send(fi);
            }
        }
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn summary(sorted: &[u64]) -> Value {
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().sum::<u64>() as f64 / sorted.len() as f64 / 1000.0
    };
    json!({
        "p50": round3(pct_ms(sorted, 50.0)),
        "p90": round3(pct_ms(sorted, 90.0)),
        "p99": round3(pct_ms(sorted, 99.0)),
        "p999": round3(pct_ms(sorted, 99.9)),
        "max": round3(sorted.last().copied().unwrap_or(0) as f64 / 1000.0),
        "mean": round3(mean),
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_lat(v: &Value) -> String {
    format!(
        "p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2}  mean {:>8.2}",
        v["p50"].as_f64().unwrap_or(0.0),
        v["p90"].as_f64().unwrap_or(0.0),
        v["p99"].as_f64().unwrap_or(0.0),
        v["p999"].as_f64().unwrap_or(0.0),
        v["max"].as_f64().unwrap_or(0.0),
        v["mean"].as_f64().unwrap_or(0.0),
    )
}

fn base_url(args: &Args) -> Result<String, String> {
    let url = reqwest::Url::parse(&args.url).map_err(|e| format!("--url: {e}"))?;
    if url.scheme() != "http" {
        return Err("--url: only plain http:// is supported".into());
    }
    if url.host_str() != Some("127.0.0.1") {
        return Err("--url: this tool only sends traffic to 127.0.0.1".into());
    }
    let port = url
        .port()
        .ok_or("--url: give the port explicitly, e.g. http://127.0.0.1:8080")?;
    let ok_id = !args.account.is_empty()
        && args
            .account
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok_id {
        return Err("--account: unexpected characters".into());
    }
    Ok(format!(
        "http://127.0.0.1:{port}/v1/accounts/{}",
        args.account
    ))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("rest_load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be positive".into());
    }
    if args.sessions == 0 || args.members == 0 || args.max_in_flight == 0 {
        return Err("--sessions, --members and --max-in-flight must be positive".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let base = base_url(&args)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(args.timeout)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let (floater_tx, floater_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut ctx = Ctx {
        client,
        base,
        username: args.username.clone(),
        password: args.password.clone(),
        sessions: Vec::new(),
        floaters: Vec::new(),
        floater_tx,
        floater_rx: tokio::sync::Mutex::new(floater_rx),
        in_flight: Semaphore::new(args.max_in_flight),
        put_subs_counter: AtomicU64::new(0),
        created_counter: AtomicU64::new(0),
        sent_measured: AtomicU64::new(0),
        recorder: Mutex::new(Recorder::default()),
        seed: args.seed,
    };

    let mixer = Mixer::new();
    println!("patchbay REST load: {} label={:?}", args.url, args.label);
    println!(
        "  open loop, target {:.0} req/s ({:.1} slots/s), warmup {:?}, measured {:?}, max in flight {}",
        args.rate,
        args.rate / mixer.requests_per_slot,
        args.warmup,
        args.duration,
        args.max_in_flight
    );
    let mix_text: Vec<String> = MIX
        .iter()
        .map(|(slot, share)| match slot {
            Slot::Single(op) => format!("{} {share}%", op.name()),
            Slot::AddRemove => format!("put_add+delete_remove pair {share}%"),
        })
        .collect();
    println!("  mix (share of requests): {}", mix_text.join(", "));

    // Pool.
    let setup_start = Instant::now();
    let shared = Arc::new(ctx);
    let setup = build_pool(&shared, &args).await?;
    ctx = Arc::try_unwrap(shared).map_err(|_| "setup still running".to_string())?;
    ctx.sessions = setup.sessions;
    ctx.floaters = setup.floaters;
    for i in 0..ctx.floaters.len() {
        let _ = ctx.floater_tx.send(i);
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    println!(
        "  pool: {} sessions x {} members with subscriptions, {} floaters; built in {:.2}s",
        ctx.sessions.len(),
        args.members,
        ctx.floaters.len(),
        setup_secs
    );
    if ctx.floaters.is_empty() {
        return Err("--floaters must be positive (the mix adds and removes members)".into());
    }
    let ctx = Arc::new(ctx);

    // Schedule.
    let slot_rate = args.rate / mixer.requests_per_slot;
    let interval = 1.0 / slot_rate;
    let start = Instant::now() + Duration::from_millis(50);
    let measure_start = start + args.warmup;
    let warmup_slots = (args.warmup.as_secs_f64() * slot_rate).round() as u64;
    let total_slots = warmup_slots + (args.duration.as_secs_f64() * slot_rate).round() as u64;
    let ticks = clock_ticks();
    let server_pid = args.server_pid.map(|p| p.to_string());
    // The scheduler is a plain thread with `std::thread::sleep` (tens of microseconds of
    // slack) rather than a tokio timer (1 ms granularity), so the send times it hands out
    // are close to the fixed schedule; whatever lag remains is still charged as latency.
    let runtime = tokio::runtime::Handle::current();
    let sched_ctx = ctx.clone();
    let sched_pid = server_pid.clone();
    let seed = args.seed;
    let scheduler = tokio::task::spawn_blocking(move || {
        let mut cpu_before = None;
        let mut handles = Vec::with_capacity(total_slots as usize);
        let mut scheduled_requests = 0u64;
        let mut max_lag = Duration::ZERO;
        for i in 0..total_slots {
            let t = start + Duration::from_secs_f64(i as f64 * interval);
            let now = Instant::now();
            if t > now {
                std::thread::sleep(t - now);
            }
            let measured = i >= warmup_slots;
            if measured && cpu_before.is_none() {
                cpu_before = Some((
                    Instant::now(),
                    sched_pid
                        .as_deref()
                        .and_then(|p| stat_cpu_seconds(&format!("/proc/{p}/stat"), ticks)),
                    stat_cpu_seconds("/proc/self/stat", ticks),
                    loadavg(),
                ));
            }
            let r = splitmix(i ^ seed.rotate_left(32));
            let slot = mixer.pick(r);
            if measured {
                scheduled_requests += requests_per_slot(slot) as u64;
                max_lag = max_lag.max(Instant::now().saturating_duration_since(t));
            }
            handles.push(runtime.spawn(run_slot(
                sched_ctx.clone(),
                slot,
                splitmix(r),
                t,
                measured,
            )));
        }
        (handles, cpu_before, scheduled_requests, max_lag)
    });
    let (handles, cpu_before, scheduled_requests, max_lag) =
        scheduler.await.map_err(|e| format!("scheduler: {e}"))?;
    let deadline = tokio::time::Instant::now() + args.drain;
    let mut unfinished_tasks = 0usize;
    for mut h in handles {
        let done = if unfinished_tasks == 0 {
            tokio::time::timeout_at(deadline, &mut h).await.is_ok()
        } else {
            h.is_finished()
        };
        if !done {
            h.abort();
            unfinished_tasks += 1;
        }
    }
    let drained = unfinished_tasks == 0;
    let end = Instant::now();
    let (t0, server0, client0, load0) =
        cpu_before.unwrap_or((measure_start, None, None, loadavg()));
    let wall = end.saturating_duration_since(t0).as_secs_f64();
    let server_cpu = server_pid
        .as_deref()
        .and_then(|p| stat_cpu_seconds(&format!("/proc/{p}/stat"), ticks))
        .zip(server0)
        .map(|(a, b)| a - b);
    let client_cpu = stat_cpu_seconds("/proc/self/stat", ticks)
        .zip(client0)
        .map(|(a, b)| a - b);
    let load1 = loadavg();

    // Report.
    let rec = std::mem::take(&mut *ctx.recorder.lock().unwrap_or_else(|e| e.into_inner()));
    let mut all = Vec::new();
    let mut per_op_json = serde_json::Map::new();
    let mut per_op_lines = Vec::new();
    let completed: u64 = rec
        .per_op
        .values()
        .map(|s| s.latencies_us.len() as u64)
        .sum();
    let errors: u64 = rec.per_op.values().map(|s| s.errors).sum();
    for op in Op::ALL {
        let Some(stats) = rec.per_op.get(&op) else {
            continue;
        };
        let mut v = stats.latencies_us.clone();
        v.sort_unstable();
        all.extend_from_slice(&v);
        let lat = summary(&v);
        let share = 100.0 * v.len() as f64 / completed.max(1) as f64;
        per_op_lines.push(format!(
            "  {:<26} {:>7} {:>5.1}% err {:>5}  {}",
            op.name(),
            v.len(),
            share,
            stats.errors,
            fmt_lat(&lat)
        ));
        per_op_json.insert(
            op.name().into(),
            json!({ "count": v.len(), "share_pct": round3(share), "errors": stats.errors, "latency_ms": lat }),
        );
    }
    all.sort_unstable();
    let overall = summary(&all);
    let sent = ctx.sent_measured.load(Ordering::Relaxed);
    let secs = args.duration.as_secs_f64();
    let completion_span = rec
        .last_completion
        .map(|t| t.saturating_duration_since(measure_start).as_secs_f64())
        .unwrap_or(secs)
        .max(secs);
    let send_rate = sent as f64 / secs;
    let throughput = completed as f64 / completion_span;
    let ok = completed - errors.min(completed);
    let not_completed = sent.saturating_sub(completed);
    let not_sent = scheduled_requests.saturating_sub(sent);

    println!(
        "requests: scheduled {scheduled_requests}, sent {sent}, completed {completed}, ok {ok}, errors {errors}, sent-but-unfinished {not_completed}, scheduled-but-unsent {not_sent}"
    );
    println!("errors by status: {:?}", rec.errors);
    println!(
        "rate: target {:.0}/s, sent {:.1}/s, completed {:.1}/s (last completion {:.2}s after measured start); scheduler max lag {:.2} ms; drained {drained} ({} tasks left)",
        args.rate,
        send_rate,
        throughput,
        completion_span,
        max_lag.as_secs_f64() * 1000.0,
        unfinished_tasks
    );
    println!("latency ms, from scheduled send time:");
    println!(
        "  {:<26} {:>7} {:>5.1}% err {:>5}  {}",
        "overall",
        completed,
        100.0,
        errors,
        fmt_lat(&overall)
    );
    for line in &per_op_lines {
        println!("{line}");
    }
    match server_cpu {
        Some(c) => println!(
            "server CPU (pid {}): {:.2}s over {:.2}s wall = {:.1}% of one core",
            args.server_pid.unwrap_or(0),
            c,
            wall,
            100.0 * c / wall
        ),
        None => println!("server CPU: not measured (no --server-pid, or /proc unreadable)"),
    }
    if let Some(c) = client_cpu {
        println!(
            "load tool CPU: {:.2}s = {:.1}% of one core",
            c,
            100.0 * c / wall
        );
    }
    println!("loadavg: at measured start {load0}; at end {load1}");
    let result = json!({
        "label": args.label,
        "target_rate": args.rate,
        "duration_s": secs,
        "warmup_s": args.warmup.as_secs_f64(),
        "max_in_flight": args.max_in_flight,
        "pool": { "sessions": ctx.sessions.len(), "members": args.members, "floaters": ctx.floaters.len(), "setup_s": round3(setup_secs) },
        "mix_pct": MIX.iter().map(|(slot, share)| {
            let name = match slot { Slot::Single(op) => op.name(), Slot::AddRemove => "add_remove_pair" };
            (name.to_owned(), json!(share))
        }).collect::<serde_json::Map<_, _>>(),
        "scheduled": scheduled_requests,
        "sent": sent,
        "completed": completed,
        "ok": ok,
        "errors": errors,
        "errors_by_status": rec.errors,
        "unfinished": not_completed,
        "unsent": not_sent,
        "drained": drained,
        "send_rate": round3(send_rate),
        "throughput": round3(throughput),
        "scheduler_max_lag_ms": round3(max_lag.as_secs_f64() * 1000.0),
        "latency_ms": overall,
        "per_op": per_op_json,
        "server_cpu_s": server_cpu.map(round3),
        "server_cpu_pct": server_cpu.map(|c| round3(100.0 * c / wall)),
        "client_cpu_s": client_cpu.map(round3),
        "client_cpu_pct": client_cpu.map(|c| round3(100.0 * c / wall)),
        "wall_s": round3(wall),
        "loadavg_start": load0,
        "loadavg_end": load1,
    });
    println!("RESULT {result}");
    if !drained {
        return Err(format!(
            "{unfinished_tasks} scheduled units still unfinished after the {:?} drain",
            args.drain
        ));
    }
    Ok(())
}
