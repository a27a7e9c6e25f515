//! Prometheus metrics: the process's recorder, the `GET /metrics` route, the HTTP request
//! layer, the gauges computed at scrape time (the process's own `process_*` metrics from
//! `metrics-process` among them, and `patchbay_build_info`), and the per-shard publisher of
//! the media engines' counters. Every metric is listed in `docs/metrics.md`.
//!
//! Metrics go through the `metrics` facade into `metrics-exporter-prometheus`'s recorder,
//! installed once per process ([`install`]); the exporter's own HTTP listener is not used:
//! [`router`] renders on our route (on the API listener, or on `--metrics-listen`). With
//! `--metrics false` nothing is installed, the facade's macros do nothing and `/metrics` is
//! not served.
//!
//! Hot paths stay free of the facade: the media engine counts in plain integers
//! ([`crate::media::MediaCounters`]) and each shard's task hands the increase to the recorder
//! once per [`PUBLISH_EVERY`] ([`ShardMeter`]), with its busy time and inbox depth.
#![allow(clippy::disallowed_methods)] // the runtime reads the clock

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::media::{MediaCounters, QualitySamples};

use super::media::MediaHandle;

/// How often a shard hands its counters to the recorder.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for the database while computing the scrape-time gauges; past it the gauges
/// keep their last values and the scrape is still answered.
const SCRAPE_DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Buckets of every `_ratio` histogram (fractions from 0 to 1: loss).
const RATIO_BUCKETS: &[f64] = &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Latency buckets (seconds) of every `_seconds` histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the process (once; later calls return the same
/// handle). Fails only when another recorder was installed first.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_ratio".into()), RATIO_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    // Two apps built at once in one process (tests): the first one's recorder wins.
    if HANDLE.set(handle.clone()).is_ok() {
        metrics::set_global_recorder(recorder)
            .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
        describe();
        metrics_process::Collector::default().describe();
        gauge!("patchbay_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(handle)
    } else {
        Ok(HANDLE.get().cloned().unwrap_or(handle))
    }
}

/// The help text of each metric (`# HELP` lines).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "patchbay_http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        "patchbay_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (to the response head), by method and route template"
    );
    describe_gauge!(
        "patchbay_build_info",
        "Always 1; the label `version` is this binary's version"
    );
    describe_counter!(
        "patchbay_connections_shed_total",
        "Connections still in their head closed to make room on a full listener, by listener"
    );
    describe_gauge!("patchbay_sessions", "Sessions in the database");
    describe_gauge!("patchbay_participants", "Participants in the database");
    describe_gauge!(
        "patchbay_devices_connected",
        "Devices attached to the media plane (browsers and phones)"
    );
    describe_gauge!("patchbay_phone_calls", "SIP calls in progress");
    describe_counter!(
        "patchbay_media_forwarded_packets_total",
        "Media packets written to subscribers, by shard"
    );
    describe_counter!(
        "patchbay_media_forwarded_bytes_total",
        Unit::Bytes,
        "Media payload bytes written to subscribers, by shard"
    );
    describe_counter!(
        "patchbay_media_forward_failures_total",
        "Frames that could not be written to a subscriber (no matching codec, write refused), by shard"
    );
    describe_counter!(
        "patchbay_media_dropped_datagrams_total",
        "Datagrams no device of the shard took (noise, probes, unauthenticated STUN), by shard"
    );
    describe_counter!(
        "patchbay_media_unusable_datagrams_total",
        "Datagrams from a known peer that the WebRTC stack refused, by shard"
    );
    describe_counter!(
        "patchbay_media_shard_busy_microseconds_total",
        Unit::Microseconds,
        "Time a shard's task spent handling input and sending (not waiting), by shard"
    );
    describe_gauge!(
        "patchbay_media_shard_inbox_depth",
        "Commands and messages queued for a shard, sampled once a second, by shard"
    );
    describe_counter!(
        "patchbay_media_keyframe_requests_received_total",
        "Keyframe requests (PLI, FIR) received from subscribers, by shard"
    );
    describe_counter!(
        "patchbay_media_keyframe_requests_sent_total",
        "Keyframe requests sent to publishers (for subscribers' requests and source switches), by shard"
    );
    describe_counter!(
        "patchbay_media_keyframe_requests_merged_total",
        "Keyframe requests not sent to a publisher because one went to the same track within 300 ms, by shard"
    );
    describe_counter!(
        "patchbay_media_keyframe_requests_held_total",
        "Subscribers' keyframe requests not sent to a publisher because the subscriber's link is congested or the track paused for it, by shard"
    );
    describe_counter!(
        "patchbay_media_video_pauses_total",
        "Video tracks paused for a subscriber whose link cannot carry them (audio first), by shard"
    );
    describe_counter!(
        "patchbay_media_video_resumes_total",
        "Paused video tracks resumed for their subscriber, by shard"
    );
    describe_counter!(
        "patchbay_media_estimate_restarts_total",
        "Subscribers' bandwidth estimators restarted, on a link reporting no loss: from what they are sent (the estimate lagged far below it), or from the estimate itself (it stalled under a paused video track), by shard"
    );
    describe_counter!(
        "patchbay_media_publisher_caps_total",
        "REMB ceilings sent to publishers whose video track has one viewer (once a second while the cap holds), by shard"
    );
    describe_counter!(
        "patchbay_media_nacks_received_total",
        "NACK feedback messages received from subscribers, by shard"
    );
    describe_counter!(
        "patchbay_media_nacks_sent_total",
        "NACK feedback messages sent to publishers, by shard"
    );
    describe_histogram!(
        "patchbay_media_subscriber_loss_ratio",
        "Loss fraction subscribers reported, one sample per track and second with a receiver report, by shard"
    );
    describe_histogram!(
        "patchbay_media_subscriber_rtt_seconds",
        Unit::Seconds,
        "Round-trip time to subscribers from their receiver reports, one sample per track and second, by shard"
    );
    describe_counter!(
        "patchbay_sip_calls_started_total",
        "SIP calls answered (a device joined the session)"
    );
    describe_counter!(
        "patchbay_sip_calls_forwarded_total",
        "INVITEs for a session another process hosts, sent on to that process"
    );
    describe_counter!(
        "patchbay_sip_calls_ended_total",
        "SIP calls ended, by reason"
    );
    describe_counter!(
        "patchbay_sip_jitter_underruns_total",
        "Jitter-buffer underruns of phone calls: uplink (the phone's audio ran dry) and downlink (the mixer ran dry)"
    );
    describe_gauge!(
        "patchbay_db_pool_connections",
        "Database pool connections, by pool and state (in_use, idle)"
    );
    describe_histogram!(
        "patchbay_db_query_duration_seconds",
        Unit::Seconds,
        "Time of one store operation (one or more statements), by operation"
    );
    describe_gauge!(
        "patchbay_webhook_outbox_pending",
        "Webhook events in the outbox waiting to be delivered"
    );
    describe_counter!(
        "patchbay_webhook_deliveries_total",
        "Webhook delivery attempts, by outcome (delivered, retry, gave_up)"
    );
}

/// One connection pool's occupancy.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauge {
    /// The pool's name (`read`, `write` or `main`).
    pub name: &'static str,
    /// Connections checked out.
    pub in_use: u32,
    /// Connections open and idle.
    pub idle: u32,
}

/// Row counts the scrape shows.
#[derive(Debug, Clone, Copy)]
pub struct RowGauges {
    /// Sessions in the database.
    pub sessions: u64,
    /// Participants in the database.
    pub participants: u64,
    /// Webhook events waiting in the outbox.
    pub outbox_pending: u64,
}

/// What the database-backed gauges are read from at scrape time (the app gives the store's;
/// the runtime itself never names the store).
#[async_trait::async_trait]
pub trait DatabaseGauges: Send + Sync + 'static {
    /// The pools' occupancy now (no query).
    fn pools(&self) -> Vec<PoolGauge>;
    /// The row counts (queries).
    async fn rows(&self) -> anyhow::Result<RowGauges>;
}

/// How often the recorder drains its histograms' pending samples into their buckets (else they
/// pile up between scrapes, or forever without any).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the recorder's upkeep every [`UPKEEP_EVERY`] for as long as the runtime lives.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    });
}

/// What the scrape-time gauges are read from.
#[derive(Clone)]
pub struct Scrape {
    handle: PrometheusHandle,
    database: Arc<dyn DatabaseGauges>,
    media: MediaHandle,
}

impl Scrape {
    /// Renders with `handle`, reading the gauges from `database` and `media`.
    pub fn new(
        handle: PrometheusHandle,
        database: Arc<dyn DatabaseGauges>,
        media: MediaHandle,
    ) -> Scrape {
        Scrape {
            handle,
            database,
            media,
        }
    }

    async fn refresh(&self) {
        // The standard process metrics (CPU seconds, resident memory, open descriptors, start
        // time, threads), read from /proc now.
        metrics_process::Collector::default().collect();
        for pool in self.database.pools() {
            gauge!("patchbay_db_pool_connections", "pool" => pool.name, "state" => "in_use")
                .set(f64::from(pool.in_use));
            gauge!("patchbay_db_pool_connections", "pool" => pool.name, "state" => "idle")
                .set(f64::from(pool.idle));
        }
        gauge!("patchbay_devices_connected").set(self.media.connected_devices() as f64);
        match tokio::time::timeout(SCRAPE_DB_TIMEOUT, self.database.rows()).await {
            Ok(Ok(rows)) => {
                gauge!("patchbay_sessions").set(rows.sessions as f64);
                gauge!("patchbay_participants").set(rows.participants as f64);
                gauge!("patchbay_webhook_outbox_pending").set(rows.outbox_pending as f64);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: cannot count rows"),
            Err(_) => tracing::debug!("metrics: the database did not answer in time"),
        }
    }
}

/// `GET /metrics`: the Prometheus text exposition (format 0.0.4).
pub fn router(scrape: Scrape) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .with_state(scrape)
}

async fn render(State(scrape): State<Scrape>) -> Response {
    scrape.refresh().await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        scrape.handle.render(),
    )
        .into_response()
}

/// The layer counting each request by method, route template (never the raw path: ids would
/// make a series per resource) and status, with its latency. Requests no route matched count
/// as `route="unmatched"`. Applied with `Router::layer`, so it wraps each route and sees the
/// route's template ([`MatchedPath`]). A plain tower layer rather than `from_fn`: no boxed
/// clone of the inner service per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackHttpLayer;

impl<S> tower::Layer<S> for TrackHttpLayer {
    type Service = TrackHttp<S>;

    fn layer(&self, inner: S) -> TrackHttp<S> {
        TrackHttp { inner }
    }
}

/// The service of [`TrackHttpLayer`].
#[derive(Debug, Clone)]
pub struct TrackHttp<S> {
    inner: S,
}

impl<S> tower::Service<Request> for TrackHttp<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackHttpFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.method());
        let matched = request.extensions().get::<MatchedPath>().cloned();
        TrackHttpFuture {
            response: self.inner.call(request),
            started,
            method,
            matched,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`TrackHttp`]: records the request once its response is ready
    /// (no allocation of its own).
    pub struct TrackHttpFuture<F> {
        #[pin]
        response: F,
        started: Instant,
        method: &'static str,
        matched: Option<MatchedPath>,
    }
}

impl<F, E> std::future::Future for TrackHttpFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx))?;
        let route = this
            .matched
            .as_ref()
            .map_or("unmatched", MatchedPath::as_str);
        HTTP_SERIES.get_or_init(HttpSeries::default).record(
            this.method,
            route,
            response.status().as_u16(),
            this.started.elapsed(),
        );
        std::task::Poll::Ready(Ok(response))
    }
}

/// The HTTP series' handles, each looked up in the recorder once and kept: a request then
/// pays a read lock, a map lookup by route template and two short scans, instead of building
/// two label sets (with their strings) and looking each up in the recorder's registry.
/// Bounded: route templates are the router's (plus `unmatched`), methods are labelled from a
/// fixed set, statuses are the server's own.
static HTTP_SERIES: OnceLock<HttpSeries> = OnceLock::new();

#[derive(Default)]
struct HttpSeries {
    routes: RwLock<HashMap<Box<str>, RouteSeries>>,
}

/// One route template's series: a counter per (method, status), a histogram per method.
#[derive(Default)]
struct RouteSeries {
    requests: Vec<(&'static str, u16, Counter)>,
    durations: Vec<(&'static str, Histogram)>,
}

impl RouteSeries {
    /// Counts one request; false when a series is missing (the caller adds it).
    fn record(&self, method: &'static str, status: u16, took: Duration) -> bool {
        let counter = self
            .requests
            .iter()
            .find(|(m, s, _)| *m == method && *s == status);
        let histogram = self.durations.iter().find(|(m, _)| *m == method);
        match (counter, histogram) {
            (Some((_, _, counter)), Some((_, histogram))) => {
                counter.increment(1);
                histogram.record(took.as_secs_f64());
                true
            }
            _ => false,
        }
    }

    fn add(&mut self, method: &'static str, route: &str, status: u16) {
        if !self
            .requests
            .iter()
            .any(|(m, s, _)| *m == method && *s == status)
        {
            let counter = counter!("patchbay_http_requests_total",
                "method" => method, "route" => route.to_owned(), "status" => status.to_string());
            self.requests.push((method, status, counter));
        }
        if !self.durations.iter().any(|(m, _)| *m == method) {
            let histogram = histogram!("patchbay_http_request_duration_seconds",
                "method" => method, "route" => route.to_owned());
            self.durations.push((method, histogram));
        }
    }
}

impl HttpSeries {
    fn record(&self, method: &'static str, route: &str, status: u16, took: Duration) {
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if routes
                .get(route)
                .is_some_and(|series| series.record(method, status, took))
            {
                return;
            }
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let series = routes.entry(route.into()).or_default();
        series.add(method, route, status);
        series.record(method, status, took);
    }
}

/// The method as a label: the standard ones, else `other` (no series per invented method).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// One shard's counters on their way to the recorder: the handles (looked up once) and what
/// was published last, so that each publish adds the increase.
pub struct ShardMeter {
    forwarded_packets: Counter,
    forwarded_bytes: Counter,
    forward_failures: Counter,
    dropped: Counter,
    unusable: Counter,
    busy: Counter,
    inbox: Gauge,
    keyframes_received: Counter,
    keyframes_sent: Counter,
    keyframes_merged: Counter,
    keyframes_held: Counter,
    video_pauses: Counter,
    video_resumes: Counter,
    publisher_caps: Counter,
    estimate_restarts: Counter,
    nacks_received: Counter,
    nacks_sent: Counter,
    subscriber_loss: Histogram,
    subscriber_rtt: Histogram,
    published: MediaCounters,
    dropped_published: u64,
    /// Busy time since the last publish.
    busy_since: Duration,
    last: Instant,
}

impl ShardMeter {
    /// The meter of shard `index`.
    pub fn new(index: usize, now: Instant) -> ShardMeter {
        let shard = index.to_string();
        ShardMeter {
            forwarded_packets: counter!("patchbay_media_forwarded_packets_total", "shard" => shard.clone()),
            forwarded_bytes: counter!("patchbay_media_forwarded_bytes_total", "shard" => shard.clone()),
            forward_failures: counter!("patchbay_media_forward_failures_total", "shard" => shard.clone()),
            dropped: counter!("patchbay_media_dropped_datagrams_total", "shard" => shard.clone()),
            unusable: counter!("patchbay_media_unusable_datagrams_total", "shard" => shard.clone()),
            busy: counter!("patchbay_media_shard_busy_microseconds_total", "shard" => shard.clone()),
            inbox: gauge!("patchbay_media_shard_inbox_depth", "shard" => shard.clone()),
            keyframes_received: counter!("patchbay_media_keyframe_requests_received_total", "shard" => shard.clone()),
            keyframes_sent: counter!("patchbay_media_keyframe_requests_sent_total", "shard" => shard.clone()),
            keyframes_merged: counter!("patchbay_media_keyframe_requests_merged_total", "shard" => shard.clone()),
            keyframes_held: counter!("patchbay_media_keyframe_requests_held_total", "shard" => shard.clone()),
            video_pauses: counter!("patchbay_media_video_pauses_total", "shard" => shard.clone()),
            video_resumes: counter!("patchbay_media_video_resumes_total", "shard" => shard.clone()),
            publisher_caps: counter!("patchbay_media_publisher_caps_total", "shard" => shard.clone()),
            estimate_restarts: counter!("patchbay_media_estimate_restarts_total", "shard" => shard.clone()),
            nacks_received: counter!("patchbay_media_nacks_received_total", "shard" => shard.clone()),
            nacks_sent: counter!("patchbay_media_nacks_sent_total", "shard" => shard.clone()),
            subscriber_loss: histogram!("patchbay_media_subscriber_loss_ratio", "shard" => shard.clone()),
            subscriber_rtt: histogram!("patchbay_media_subscriber_rtt_seconds", "shard" => shard),
            published: MediaCounters::default(),
            dropped_published: 0,
            busy_since: Duration::ZERO,
            last: now,
        }
    }

    /// The task was busy for `spent`.
    pub fn busy(&mut self, spent: Duration) {
        self.busy_since += spent;
    }

    /// Whether a publish is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= PUBLISH_EVERY
    }

    /// Hands the increase of `counters` (the engine's, cumulative), of `dropped` (datagrams
    /// no device took, cumulative) and the busy time to the recorder; samples `inbox_depth`.
    pub fn publish(
        &mut self,
        counters: MediaCounters,
        dropped: u64,
        inbox_depth: usize,
        now: Instant,
    ) {
        let before = self.published;
        self.forwarded_packets.increment(
            counters
                .forwarded_packets
                .saturating_sub(before.forwarded_packets),
        );
        self.forwarded_bytes.increment(
            counters
                .forwarded_bytes
                .saturating_sub(before.forwarded_bytes),
        );
        self.forward_failures.increment(
            counters
                .forward_failures
                .saturating_sub(before.forward_failures),
        );
        self.unusable.increment(
            counters
                .unusable_datagrams
                .saturating_sub(before.unusable_datagrams),
        );
        self.dropped
            .increment(dropped.saturating_sub(self.dropped_published));
        let increase = |now: u64, before: u64| now.saturating_sub(before);
        self.keyframes_received.increment(increase(
            counters.keyframe_requests_received,
            before.keyframe_requests_received,
        ));
        self.keyframes_sent.increment(increase(
            counters.keyframe_requests,
            before.keyframe_requests,
        ));
        self.keyframes_merged.increment(increase(
            counters.keyframe_requests_merged,
            before.keyframe_requests_merged,
        ));
        self.keyframes_held.increment(increase(
            counters.keyframe_requests_held,
            before.keyframe_requests_held,
        ));
        self.video_pauses
            .increment(increase(counters.video_pauses, before.video_pauses));
        self.video_resumes
            .increment(increase(counters.video_resumes, before.video_resumes));
        self.publisher_caps
            .increment(increase(counters.publisher_caps, before.publisher_caps));
        self.estimate_restarts.increment(increase(
            counters.estimate_restarts,
            before.estimate_restarts,
        ));
        self.nacks_received
            .increment(increase(counters.nacks_received, before.nacks_received));
        self.nacks_sent
            .increment(increase(counters.nacks_sent, before.nacks_sent));
        // Whole microseconds (the facade's counters are integers); the rest waits for the
        // next publish, so no busy time is lost to rounding.
        let micros = self.busy_since.as_micros() as u64;
        self.busy.increment(micros);
        self.busy_since -= Duration::from_micros(micros);
        self.inbox.set(inbox_depth as f64);
        self.published = counters;
        self.dropped_published = dropped;
        self.last = now;
    }

    /// Records the subscribers' loss and RTT samples the shard took since the last call.
    pub fn record_quality(&mut self, samples: QualitySamples) {
        for loss in samples.loss {
            self.subscriber_loss.record(f64::from(loss));
        }
        for rtt in samples.rtt {
            self.subscriber_rtt.record(rtt.as_secs_f64());
        }
    }
}

/// Serves `router` (`/metrics`) on a listener of its own until `stop` turns true.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    settings: super::http::HttpSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let shutdown = async move {
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        };
        // Plain HTTP: a separate metrics listener is for the scraper on an internal network.
        super::http::serve(
            listener,
            router,
            settings,
            None,
            Default::default(),
            shutdown,
        )
        .await;
    })
}
