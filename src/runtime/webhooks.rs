//! The webhook tasks: the recorder (control's lifecycle feed into the outbox, in order, and
//! into this process's live state), the heartbeat of that live state, the delivery worker (the outbox to the receivers, signed, retried) and the session cleanup
//! timer. The worker reads the outbox in batches and keeps a bounded number of attempts in
//! flight, so a slow or dead receiver costs it waiting time only, never the REST API's or the
//! media plane's, and never unbounded memory; what it sends next and when it retries is
//! decided by [`crate::webhooks::Dispatcher`]. Where it may send is decided by
//! [`crate::webhooks::Destinations`]: a URL is checked before connecting, and host names are
//! resolved by [`GuardedResolver`], which hands the client only allowed addresses, so the
//! connection goes to an address that was checked (no second lookup can differ).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::epoch_ms as now_ms;
use crate::control::{
    AttemptOutcome, Control, FeedItem, LifecycleEvent, OutboxEvent, Recording, WebhookFeed,
};
use crate::webhooks::{
    receiver_of, sign_all, AttemptResult, Concurrency, Destinations, Dispatcher, Refusal,
    RetryPolicy,
};

/// How often the worker looks for due events when nothing wakes it.
const POLL: Duration = Duration::from_millis(200);
/// How many due events one read of the outbox returns at most.
const BATCH: u32 = 256;
/// The shortest time between two reads of the outbox.
const FETCH_GAP: Duration = Duration::from_millis(50);
/// How long an idle connection to a receiver is kept for the next delivery.
const IDLE_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Idle connections kept per receiver.
const IDLE_PER_RECEIVER: usize = 2;
/// Receivers whose idle connections are kept: the ones used last.
const KEPT_RECEIVERS: usize = 32;
/// Events recorded in one write at most.
const RECORD_BATCH: usize = 256;
/// How long a receipt waits for a database that cannot take its event before it is answered
/// `false` (the event is still written when the database answers again).
pub const RECORD_WAIT: Duration = Duration::from_secs(5);
/// How often the cleanup looks for expired sessions.
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// The cleanup's duty, held by one process at a time ([`Control::take_duty`]).
const CLEANUP_DUTY: &str = "cleanup";

/// How long the cleanup's holder keeps it without renewing: two and a half rounds, so that a
/// holder alive keeps it and one that died hands it over within this.
const CLEANUP_LEASE_MS: i64 = 150_000;

/// Webhook delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Retry bounds and the per-attempt timeout.
    pub policy: RetryPolicy,
    /// Attempts in flight at once, in all and per account or receiver.
    pub concurrency: Concurrency,
    /// Where deliveries may go.
    pub destinations: Destinations,
    /// Sessions older than this are removed.
    pub session_max_age: Duration,
    /// Participants older than this are deleted (none when unset).
    pub participant_max_age: Option<Duration>,
    /// Delivered and given-up events, and delivery attempts, older than this are deleted.
    pub retention: Duration,
}

/// Now in the database's clock ([`Control::lease_ms`]), the clock the outbox is stamped and
/// compared in (events' creation and due times, claims, attempts, retention), so processes
/// whose clocks disagree agree on what is due and who holds a claim.
fn outbox_now(control: &Control) -> i64 {
    control.lease_ms(now_ms())
}

/// Starts the recorder, the delivery worker and the cleanup timer.
#[allow(clippy::disallowed_methods)] // the runtime starts tasks
pub fn spawn(control: Control, settings: WebhookSettings) -> anyhow::Result<()> {
    let destinations = Arc::new(settings.destinations.clone());
    let receivers = Receivers::new(settings.policy.attempt_timeout, destinations.clone())?;
    let wake = Arc::new(Notify::new());
    let feed = control.webhook_feed();
    let ages = Ages {
        session: settings.session_max_age,
        participant: settings.participant_max_age,
        retention: settings.retention,
    };
    tokio::spawn(record(control.clone(), feed, wake.clone()));
    tokio::spawn(deliver(
        control.clone(),
        receivers,
        destinations,
        settings,
        wake,
    ));
    tokio::spawn(cleanup(control, ages));
    Ok(())
}

/// Control's lifecycle events into the outbox, in order, in batches of what has queued up
/// (at most [`RECORD_BATCH`], one write each), each event's receipt answered once its batch
/// is written. A database that cannot answer holds the feed back (the batch is retried)
/// rather than dropping events; the receipt of an event not written within [`RECORD_WAIT`]
/// of its arrival is answered `false` meanwhile (the connect waiting on one is refused "try
/// again later"), whether it is in the batch being retried or queued behind it, and the event
/// is still written when the database can take it. The same write updates this process's
/// live state. Events raised before this process was taken for dead (fenced), and batches
/// the store refuses because it was, are answered `false` and not written: the process that
/// took it for dead wrote its devices' ends.
#[allow(clippy::disallowed_methods)] // the runtime reads the clock
async fn record(control: Control, mut feed: WebhookFeed, wake: Arc<Notify>) {
    let mut queue = RecordQueue::default();
    loop {
        if queue.items.is_empty() {
            match feed.recv().await {
                Some(item) => queue.push(item),
                None => return,
            }
        }
        queue.take_arrived(&mut feed);
        let mut batch: Vec<Waiting> = queue
            .items
            .drain(..queue.items.len().min(RECORD_BATCH))
            .collect();
        let at = outbox_now(&control);
        let mut backoff = Duration::from_millis(100);
        loop {
            // Raised before this process was fenced (checked again before each try: a fence
            // may come while a batch waits for the database): the process that took it for
            // dead wrote what they were about.
            let generation = control.generation();
            let (stale, fresh): (Vec<Waiting>, Vec<Waiting>) = batch
                .drain(..)
                .partition(|w| w.item.generation < generation);
            batch = fresh;
            if !stale.is_empty() {
                tracing::warn!(
                    events = stale.len(),
                    "events raised before this process was taken for dead are not recorded"
                );
            }
            for mut waiting in stale {
                answer(std::slice::from_mut(&mut waiting), false);
                control.event_settled();
            }
            if batch.is_empty() {
                break;
            }
            let events: Vec<&LifecycleEvent> = batch.iter().map(|w| &w.item.event).collect();
            match control.record_events(&events, generation, at).await {
                Ok(Recording::Written(n)) => {
                    if n > 0 {
                        wake.notify_one();
                    }
                    answer(&mut batch, true);
                    break;
                }
                Ok(Recording::Fenced) => {
                    tracing::warn!(
                        events = batch.len(),
                        "this process was taken for dead: its events are not recorded"
                    );
                    answer(&mut batch, false);
                    break;
                }
                Err(e @ crate::control::ControlError::Unavailable { .. }) => {
                    tracing::warn!(error = %e, events = batch.len(), "cannot record webhooks now; retrying");
                    queue.take_arrived(&mut feed);
                    let now = Instant::now();
                    answer_overdue(&mut batch, now);
                    answer_overdue(queue.items.make_contiguous(), now);
                    tokio_sleep(backoff).await;
                    backoff = (backoff * 2).min(RECORD_BACKOFF_MAX);
                }
                Err(e) if batch.len() > 1 => {
                    // One event the store refuses must not take the others with it: record
                    // them one by one.
                    tracing::warn!(error = %e, "a batch of webhooks failed; recording its events one by one");
                    for waiting in &mut batch {
                        let one = [&waiting.item.event];
                        let ok = match control
                            .record_events(&one, waiting.item.generation, at)
                            .await
                        {
                            Ok(Recording::Written(_)) => true,
                            Ok(Recording::Fenced) => false,
                            Err(e) => {
                                tracing::error!(error = %e, event = ?waiting.item.event, "cannot record a webhook");
                                false
                            }
                        };
                        if let Some(tx) = waiting.item.recorded.take() {
                            let _ = tx.send(ok);
                        }
                    }
                    wake.notify_one();
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, event = ?batch[0].item.event, "cannot record a webhook");
                    answer(&mut batch, false);
                    break;
                }
            }
        }
        for _ in batch.drain(..) {
            control.event_settled();
        }
    }
}

/// The longest pause between two tries of a batch the database could not take: short enough
/// that the receipts queued meanwhile are answered close to their [`RECORD_WAIT`].
const RECORD_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// An event of the feed, and when it arrived.
struct Waiting {
    item: FeedItem,
    since: Instant,
}

/// The events taken from the feed and not written yet, in order.
#[derive(Default)]
struct RecordQueue {
    items: std::collections::VecDeque<Waiting>,
}

impl RecordQueue {
    #[allow(clippy::disallowed_methods)] // the runtime reads the clock
    fn push(&mut self, item: FeedItem) {
        self.items.push_back(Waiting {
            item,
            since: Instant::now(),
        });
    }

    /// Takes every event on the feed now.
    fn take_arrived(&mut self, feed: &mut WebhookFeed) {
        while let Ok(item) = feed.try_recv() {
            self.push(item);
        }
    }
}

/// Answers the receipts of `batch` not answered yet.
fn answer(batch: &mut [Waiting], recorded: bool) {
    for waiting in batch {
        if let Some(tx) = waiting.item.recorded.take() {
            let _ = tx.send(recorded);
        }
    }
}

/// Answers `false` the receipts of the events that have waited [`RECORD_WAIT`] (they are
/// still written later).
fn answer_overdue(waiting: &mut [Waiting], now: Instant) {
    for w in waiting {
        if now.duration_since(w.since) >= RECORD_WAIT {
            if let Some(tx) = w.item.recorded.take() {
                let _ = tx.send(false);
            }
        }
    }
}

/// The delivery worker: due heads of the outbox, at most one attempt per participant.
#[allow(clippy::disallowed_methods)] // the runtime reads the clock and sleeps
async fn deliver(
    control: Control,
    mut receivers: Receivers,
    destinations: Arc<Destinations>,
    settings: WebhookSettings,
    wake: Arc<Notify>,
) {
    let mut dispatcher = Dispatcher::new(settings.policy, settings.concurrency);
    let mut attempts: JoinSet<(OutboxEvent, AttemptResult)> = JoinSet::new();
    // Accounts take turns in each read; one account alone may fill all but a share.
    let per_account = u32::try_from(settings.concurrency.total).unwrap_or(u32::MAX);
    // The due heads last read, less those started: places that free up are filled from here,
    // and the outbox is read again when something may have changed (an attempt ended, events
    // were recorded, the poll interval passed), at most once per FETCH_GAP. One read per
    // attempt would bound deliveries by the read's latency.
    let mut queue: Vec<OutboxEvent> = Vec::new();
    // The event of each attempt in flight, so that an attempt whose task failed (a panic) is
    // still finished: its participant would otherwise stay busy for good.
    let mut started: std::collections::HashMap<tokio::task::Id, OutboxEvent> =
        std::collections::HashMap::new();
    let mut changed = true;
    let mut last_read: Option<Instant> = None;
    // A claim outlasts its attempt (the attempt timeout) and the write of its record.
    let claim_for = settings.policy.attempt_timeout + CLAIM_MARGIN;
    loop {
        let now = Instant::now();
        let may_read = last_read.is_none_or(|at| now >= at + FETCH_GAP);
        if dispatcher.has_room() && changed && may_read {
            match control
                .outbox_due(outbox_now(&control), BATCH, per_account)
                .await
            {
                Ok(due) => queue = due,
                Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
            }
            changed = false;
            last_read = Some(now);
        }
        let starting = dispatcher.start(&mut queue);
        for event in claim(&control, &mut dispatcher, starting, claim_for).await {
            let client = receivers.client(&receiver_of(&event.event.url));
            let task = attempts.spawn(attempt(client, destinations.clone(), event.clone()));
            started.insert(task.id(), event);
        }
        let next_read = match last_read {
            Some(at) if changed => (at + FETCH_GAP).max(now),
            _ => now + POLL,
        };
        tokio::select! {
            Some(done) = attempts.join_next_with_id(), if !attempts.is_empty() => {
                let (event, result) = match done {
                    Ok((task, done)) => {
                        started.remove(&task);
                        done
                    }
                    Err(failed) => {
                        let Some(event) = started.remove(&failed.id()) else { continue };
                        tracing::error!(error = %failed, id = %event.event.id, "a webhook attempt failed");
                        (event, AttemptResult::Failed("the attempt failed".into()))
                    }
                };
                let (log, outcome) = dispatcher.finish(&event, result, outbox_now(&control));
                let label = match outcome {
                    AttemptOutcome::Delivered => "delivered",
                    AttemptOutcome::RetryAt(_) => "retry",
                    AttemptOutcome::GaveUp if log.error.as_deref().is_some_and(|e| e.starts_with("refused")) => "refused",
                    AttemptOutcome::GaveUp => "gave_up",
                };
                metrics::counter!("patchbay_webhook_deliveries_total", "outcome" => label).increment(1);
                tracing::debug!(id = %event.event.id, event = %event.event.event, attempt = log.attempt, status = ?log.status, error = ?log.error, ?outcome, "webhook attempt");
                if let Err(e) = control.outbox_attempted(&event, &log, outcome).await {
                    // The event stays due: it is sent again (at least once).
                    tracing::warn!(error = %e, id = %event.event.id, "cannot record a webhook attempt");
                }
                // What was read of this participant is stale (its head was just attempted):
                // its next event is due from the next read.
                queue.retain(|q| q.event.participant != event.event.participant);
                changed = true;
            }
            _ = wake.notified() => changed = true,
            // With every place taken only an ending attempt makes room: no timer then.
            _ = tokio::time::sleep_until(next_read.into()), if dispatcher.has_room() => changed = true,
        }
    }
}

/// How much longer than its attempt's timeout a claim lasts: room to write the attempt's
/// record. A process that dies mid-attempt delays that event by its claim.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

/// Of the events `starting` (from [`Dispatcher::start`]), those this process claimed, in one
/// write; the others are given back to the dispatcher (another process claimed them, or the
/// database cannot answer now: they stay due).
async fn claim(
    control: &Control,
    dispatcher: &mut Dispatcher,
    starting: Vec<OutboxEvent>,
    claim_for: Duration,
) -> Vec<OutboxEvent> {
    if starting.is_empty() {
        return starting;
    }
    let seqs: Vec<i64> = starting.iter().map(|e| e.seq).collect();
    let now = outbox_now(control);
    let until = now.saturating_add(i64::try_from(claim_for.as_millis()).unwrap_or(i64::MAX));
    let claimed: std::collections::HashSet<i64> =
        match control.outbox_claim(&seqs, now, until).await {
            Ok(claimed) => claimed.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook events");
                Default::default()
            }
        };
    let mut mine = Vec::with_capacity(claimed.len());
    for event in starting {
        if claimed.contains(&event.seq) {
            mine.push(event);
        } else {
            tracing::debug!(id = %event.event.id, "a webhook event claimed by another process");
            dispatcher.abandon(&event);
        }
    }
    mine
}

#[allow(clippy::disallowed_methods)] // the runtime sleeps
async fn tokio_sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// One HTTP client per receiver (a URL's origin) for the [`KEPT_RECEIVERS`] receivers used
/// last, each keeping at most [`IDLE_PER_RECEIVER`] idle connections for
/// [`IDLE_KEEP_ALIVE`]. reqwest bounds idle connections per host only, so a single client
/// delivering to a thousand receivers would hold a thousand descriptors; here a receiver's
/// client is dropped when others were used since, and its idle connections close with it (an
/// attempt in flight keeps its client until it ends). Descriptors held for webhooks: the
/// attempts in flight plus at most `KEPT_RECEIVERS × IDLE_PER_RECEIVER` idle connections.
struct Receivers {
    attempt_timeout: Duration,
    resolver: Arc<GuardedResolver>,
    /// The TLS configuration every client shares (its trust anchors parsed once), so that a
    /// client made for a receiver costs no certificate parsing.
    tls: rustls::ClientConfig,
    kept: std::collections::HashMap<String, (reqwest::Client, u64)>,
    uses: u64,
}

impl Receivers {
    /// The clients' settings; fails when an HTTP client cannot be built at all (no TLS).
    fn new(attempt_timeout: Duration, destinations: Arc<Destinations>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/1.1 only, as the client speaks.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let receivers = Receivers {
            attempt_timeout,
            resolver: Arc::new(GuardedResolver { destinations }),
            tls,
            kept: std::collections::HashMap::new(),
            uses: 0,
        };
        receivers.build()?;
        Ok(receivers)
    }

    fn build(&self) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(self.attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve and connect on the server's behalf, past the checks.
            .no_proxy()
            .pool_idle_timeout(IDLE_KEEP_ALIVE)
            .pool_max_idle_per_host(IDLE_PER_RECEIVER)
            .dns_resolver(self.resolver.clone())
            .use_preconfigured_tls(self.tls.clone())
            .user_agent(concat!("patchbay/", env!("CARGO_PKG_VERSION")))
            .build()
    }

    /// The client for `receiver`, kept or new; the receiver used longest ago is let go when
    /// more than [`KEPT_RECEIVERS`] are kept.
    fn client(&mut self, receiver: &str) -> Option<reqwest::Client> {
        self.uses += 1;
        if let Some((client, used)) = self.kept.get_mut(receiver) {
            *used = self.uses;
            return Some(client.clone());
        }
        let client = match self.build() {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a webhook client");
                return None;
            }
        };
        if self.kept.len() >= KEPT_RECEIVERS {
            let oldest = self
                .kept
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(r, _)| r.clone());
            if let Some(oldest) = oldest {
                self.kept.remove(&oldest);
            }
        }
        self.kept
            .insert(receiver.to_owned(), (client.clone(), self.uses));
        Some(client)
    }
}

/// `error` and its causes, each once ("error sending request …: client error (Connect):
/// invalid peer certificate: UnknownIssuer"), so the delivery log says what went wrong.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// The innermost cause of `error` ("Connection refused", "invalid peer certificate:
/// UnknownIssuer").
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// One signed POST of `event`, if its destination is allowed; its result.
async fn attempt(
    client: Option<reqwest::Client>,
    destinations: Arc<Destinations>,
    event: OutboxEvent,
) -> (OutboxEvent, AttemptResult) {
    if let Err(refusal) = destinations.check_url(&event.event.url) {
        return (event, AttemptResult::Refused(refusal.to_string()));
    }
    let Some(client) = client else {
        return (event, AttemptResult::Failed("no HTTP client".into()));
    };
    let timestamp = now_ms() / 1000;
    let e = &event.event;
    let mut secrets = vec![event.secret.as_str()];
    secrets.extend(event.previous_secret.as_deref());
    let signature = sign_all(&secrets, &e.id, timestamp, &e.body);
    let sent = client
        .post(&e.url)
        .header("content-type", "application/json")
        .header("webhook-id", &e.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(e.body.clone())
        .send()
        .await;
    let result = match sent {
        Ok(response) => AttemptResult::Status(response.status().as_u16()),
        Err(err) => match refusal_in(&err) {
            Some(refusal) => AttemptResult::Refused(refusal.to_string()),
            None if err.is_timeout() => AttemptResult::Failed("timed out".into()),
            None if err.is_connect() => {
                AttemptResult::Failed(format!("cannot connect: {}", root_cause(&err)))
            }
            None => AttemptResult::Failed(format!("failed: {}", with_causes(&err))),
        },
    };
    (event, result)
}

/// The destination refusal somewhere in `err`'s causes (the resolver's), if any.
fn refusal_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut cause: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(refusal) = e.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        cause = e.source();
    }
    None
}

/// Resolves webhook hosts with the system resolver and keeps only the addresses deliveries
/// may connect to; a host with none left fails with [`Refusal::NoAllowedAddress`].
struct GuardedResolver {
    destinations: Arc<Destinations>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.destinations.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<std::net::SocketAddr> =
                found.filter(|a| destinations.allows(a.ip())).collect();
            if allowed.is_empty() {
                let refused: Box<dyn std::error::Error + Send + Sync> =
                    Box::new(Refusal::NoAllowedAddress(host));
                return Err(refused);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// How often this process tells the store it is alive (and reloads the token keys).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// Starts the heartbeat of this process's live state (where the others reach it is
/// [`Control::set_address`]'s), every [`HEARTBEAT_EVERY`] on a fixed schedule, alone in its
/// task (a beat waits for nothing else); and, in a task of its own at the same pace, the
/// upkeep that goes with it: `peers` (the other processes' addresses) kept up to date, and
/// the sessions hosted here that emptied released.
#[allow(clippy::disallowed_methods)] // the runtime starts tasks and reads the clock
pub fn spawn_heartbeat(control: Control, peers: crate::runtime::listen::Peers, beat: LastBeat) {
    let beating = control.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match beating.heartbeat(now_ms()).await {
                Ok(()) => beat.set(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "cannot record this process's heartbeat"),
            }
        }
    });
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match control.cluster_peers().await {
                Ok(addresses) => peers.replace(addresses),
                Err(e) => tracing::warn!(error = %e, "cannot read the other processes' addresses"),
            }
            if let Err(e) = control.release_idle_sessions(now_ms()).await {
                tracing::warn!(error = %e, "cannot release the sessions that emptied here");
            }
        }
    });
}

/// When this process's last heartbeat succeeded (monotonic clock, which runs on while the
/// process is paused): the reaper looks for dead processes only within a beat of one.
#[derive(Debug, Clone, Default)]
pub struct LastBeat(Arc<std::sync::Mutex<Option<Instant>>>);

impl LastBeat {
    fn set(&self, at: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
    }

    /// Whether a beat succeeded within `within`.
    #[allow(clippy::disallowed_methods)] // the runtime reads the clock
    fn recent(&self, within: Duration) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < within)
    }
}

/// How long after this process started the devices of processes that were dead before it
/// started are first accounted for: the reconnect grace (the SDK reconnects within it, and its
/// call resumes here), plus a heartbeat and a margin. A process that dies while this one runs
/// is accounted for from the start.
pub const REAP_AFTER: Duration = Duration::from_secs(30);

/// How often, after that, this process looks for processes that died.
const REAP_EVERY: Duration = Duration::from_secs(2);

/// Accounts for dead processes' devices ([`Control::reap_dead`]) every [`REAP_EVERY`]: a
/// process that dies while this one runs within about `DEAD_AFTER_MS` plus that (once this
/// one has beaten for `DEAD_AFTER_MS`); one that died before this one started only
/// [`REAP_AFTER`] after the start (its devices had the reconnect grace to come back here).
#[allow(clippy::disallowed_methods)] // the runtime starts tasks and reads the clock
pub fn spawn_reaper(control: Control, beat: LastBeat) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let started_ms = now_ms();
        let mut in_grace = true;
        loop {
            let grace_over = started.elapsed() >= REAP_AFTER;
            // Only within a beat of the last good one: a process resumed after a pause first
            // learns from a beat whether it was taken for dead itself.
            let reaped = if beat.recent(HEARTBEAT_EVERY + HEARTBEAT_EVERY / 2) {
                let seen_since = (!grace_over).then_some(started_ms);
                control.reap_dead(now_ms(), seen_since).await
            } else {
                Ok(0)
            };
            if in_grace && grace_over {
                // The devices of processes dead at start had their grace.
                control.end_resumption_window();
                in_grace = false;
            }
            match reaped {
                Ok(0) => {}
                Ok(n) => tracing::info!(devices = n, "devices of dead processes disconnected"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot account for dead processes' devices now")
                }
            }
            tokio_sleep(REAP_EVERY).await;
        }
    });
}

/// Removes expired sessions, and webhook rows past their retention, every [`CLEANUP_EVERY`].
/// What the cleanup removes, by age.
struct Ages {
    session: Duration,
    participant: Option<Duration>,
    retention: Duration,
}

async fn cleanup(control: Control, ages: Ages) {
    loop {
        // One process at a time cleans up for all; another takes over within a lease of the
        // holder's death (or at once after its clean stop).
        match control
            .take_duty(CLEANUP_DUTY, now_ms(), CLEANUP_LEASE_MS)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tokio_sleep(CLEANUP_EVERY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which process cleans up now");
                tokio_sleep(CLEANUP_EVERY).await;
                continue;
            }
        }
        match control.expire_sessions(ages.session, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "expired sessions removed"),
            Err(e) => tracing::warn!(error = %e, "cannot remove expired sessions"),
        }
        if let Some(max_age) = ages.participant {
            match control.expire_participants(max_age, now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(participants = n, "expired participants deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete expired participants"),
            }
        }
        match control
            .prune_webhooks(ages.retention, outbox_now(&control))
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "old webhook events and attempts deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old webhook events"),
        }
        tokio_sleep(CLEANUP_EVERY).await;
    }
}
