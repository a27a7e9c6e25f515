//! Wiring: open the store, build [`Control`], bind the listeners and run until stopped.
//! Tests and `main` use the same entry points ([`App::build`] binds port 0 if asked and
//! reports the address; [`App::run_until_stopped`] drains gracefully). The HTTP layers are
//! wired here: request ids and request logging (`request_log`), and the metrics of
//! `runtime::metrics`.

mod request_log;

pub use request_log::{init_logs, DEFAULT_LOG_FILTER};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

use crate::api::{self, AppState};
use crate::config::{ListenerArgs, ServeConfig};
use crate::control::{Control, DeviceControl, NewCredentials};
use crate::domain::AccountId;
use crate::media::EngineConfig;
use crate::reach;
use crate::runtime::http::{HttpSettings, HEALTH_RESERVE};
use crate::runtime::listen::{descriptor_share, ConnectionLimits};
use crate::runtime::media::{MediaHandle, ShardSetup};
use crate::runtime::sip::{SipHandle, SipSettings, SipTcpSettings};
use crate::signaling::{self, SignalingState};
use crate::store::{self, Store};

/// The account created on first start of the embedded default database.
pub const DEV_ACCOUNT: &str = "dev";

/// A built, bound, not yet running server.
pub struct App {
    control: Control,
    media: MediaHandle,
    devices: DeviceControl,
    listener: TcpListener,
    tls: Option<crate::runtime::tls::TlsAcceptor>,
    http_addr: SocketAddr,
    media_public_addr: SocketAddr,
    sip: SipHandle,
    addresses: reach::Addresses,
    turn: Option<Arc<api::TurnServers>>,
    auth_failures: api::AuthFailures,
    http: HttpSettings,
    origins: signaling::OriginPolicy,
    ws_idle_timeout: std::time::Duration,
    drain_timeout: std::time::Duration,
    /// The metrics scrape, when metrics are on.
    metrics: Option<crate::runtime::metrics::Scrape>,
    /// A listener of its own for `/metrics` (`--metrics-listen`).
    metrics_listener: Option<TcpListener>,
    /// Credentials of the dev account, when this start created it.
    pub dev_credentials: Option<NewCredentials>,
    /// The database has no account (and this start created none): nothing can use the API
    /// until `patchbay account create` makes one.
    pub no_account: bool,
    /// On SQLite, the lock that keeps a second serving process off the file (held until
    /// this server stops).
    _serving: Option<std::fs::File>,
    /// The other serving processes' addresses (their carried devices are not capped per
    /// source).
    peers: crate::runtime::listen::Peers,
}

/// On SQLite, takes the file's serving lock (`<file>.serve.lock`, an advisory lock the
/// operating system releases when the process ends, however it ends): one serving process
/// per file. Operator commands do not take it. `None` for PostgreSQL and in-memory SQLite.
fn take_serving_lock(url: &str) -> anyhow::Result<Option<std::fs::File>> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if url.contains(":memory:") || query.split('&').any(|p| p == "mode=memory") {
        return Ok(None);
    }
    // The file as sqlx opens it (percent-decoded), made absolute when it exists, so that two
    // spellings of one file take one lock.
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| anyhow::anyhow!("cannot read the database URL: {e}"))?;
    let file = options.get_filename();
    let file = std::fs::canonicalize(file).unwrap_or_else(|_| {
        // Not created yet: its directory exists (or the open fails anyway).
        match (file.parent(), file.file_name()) {
            (Some(dir), Some(name)) => std::fs::canonicalize(if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            })
            .map(|d| d.join(name))
            .unwrap_or_else(|_| file.to_path_buf()),
            _ => file.to_path_buf(),
        }
    });
    let path = file.display();
    let lock = format!("{path}.serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| anyhow::anyhow!("cannot open the serving lock {lock}: {e}"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another `patchbay serve` is using the database {path} (it holds {lock}): one \
             serving process per SQLite file. Stop it first, or give this one its own \
             --data-dir. (Operator commands such as `patchbay session list` may run beside it.)"
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(anyhow::anyhow!("cannot lock {lock}: {e}")),
    }
}

impl App {
    /// Opens the store, binds the
    /// HTTP listener and starts the media shards and the SIP bridge, as `config` says, then
    /// creates the dev account on an empty embedded database (unless `--dev-account false`).
    /// HTTP is served only by [`App::run_until_stopped`].
    pub async fn build(config: &ServeConfig) -> anyhow::Result<App> {
        // Unusable TLS files refuse the start before anything is opened.
        let tls = config.tls()?;
        crate::runtime::tls::install_crypto_provider();
        // First: the media shards and the SIP bridge take their metric handles when they start.
        let metrics_handle = if config.telemetry.metrics {
            Some(crate::runtime::metrics::install()?)
        } else {
            None
        };
        let (url, embedded) = config.database.resolve()?;
        let serving = take_serving_lock(&url)?;
        let store = match store::open_with(&url, config.database_timeouts.timeouts()).await {
            Ok(store) => store,
            Err(e) => return Err(open_failure(&url, &e).await),
        };
        let sql_store = Arc::new(store);
        let store: Arc<dyn Store> = sql_store.clone();
        let control = Control::new(store.clone()).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let http_addr = listener.local_addr()?;
        let turn = config.turn_servers()?.map(Arc::new);
        let public_ips = reach::resolve(&config.public_ip, &config.stun_server).await?;
        let shard_count = config.media_shards.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let mut first = EngineConfig::generate(config.media_listen)?;
        // The publish connections the previous process answered: their checks are refused,
        // signed, once their device is back (issue 19).
        match control.publish_credentials().await {
            Ok(list) => {
                first.previous_credentials =
                    Arc::new(list.into_iter().map(|c| (c.ufrag.clone(), c)).collect());
            }
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read the stored publish credentials: resumed calls wait for the \
                 browser to notice the restart by itself"
            ),
        }
        let mut shards = Vec::with_capacity(shard_count);
        for i in 0..shard_count {
            let mut addr = config.media_listen;
            if addr.port() != 0 {
                let port = u16::try_from(usize::from(addr.port()) + i)
                    .map_err(|_| anyhow::anyhow!("media ports run past 65535"))?;
                addr.set_port(port);
            }
            let socket = bind_media_socket(addr)
                .map_err(|e| anyhow::anyhow!("cannot bind media socket {addr}: {e}"))?;
            let bound = socket.local_addr()?;
            let public_addrs = advertised_media_addrs(&public_ips, bound)?;
            let any_port = config.media_listen.port() == 0;
            let tcp = bind_media_tcp(config.media_tcp_listen, bound, any_port, i).await?;
            let tcp_addrs = match &tcp {
                Some(listener) => advertised_media_addrs(&public_ips, listener.local_addr()?)?,
                None => Vec::new(),
            };
            // One DTLS certificate for the process: a device may move between shards.
            let config = EngineConfig {
                public_addrs,
                tcp_addrs,
                cert: first.cert.clone(),
                ice_prefix: first.ice_prefix.clone(),
                previous_credentials: first.previous_credentials.clone(),
                subscriber_bwe: config.subscriber_bwe,
            };
            shards.push(ShardSetup {
                config,
                socket,
                tcp,
            });
        }
        let media_public_addr = shards[0]
            .config
            .primary_addr()
            .ok_or_else(|| anyhow::anyhow!("no media address to advertise"))?;
        let media_addrs: Vec<Vec<SocketAddr>> = shards
            .iter()
            .map(|s| s.config.public_addrs.clone())
            .collect();
        let media_tcp_addrs: Vec<Vec<SocketAddr>> = shards
            .iter()
            .filter(|s| s.tcp.is_some())
            .map(|s| s.config.tcp_addrs.clone())
            .collect();
        // Issue 10: webhooks from the outbox, and the session cleanup.
        // One policy, read once: control checks a callbackUrl when it is set, the delivery
        // worker at each delivery.
        let destinations = config.webhooks.destinations();
        control.set_webhook_destinations(destinations.clone());
        crate::runtime::webhooks::spawn(
            control.clone(),
            crate::runtime::webhooks::WebhookSettings {
                policy: config.webhooks.retry_policy(),
                concurrency: config.webhooks.concurrency(),
                destinations,
                session_max_age: config.webhooks.session_max_age,
                participant_max_age: config.webhooks.participant_max_age,
                retention: config.webhooks.webhook_retention,
            },
        )?;
        // What other processes had live, read before this one's first heartbeat: a device of
        // theirs that reconnects here resumes its call (no second onConnect). The reaper
        // accounts for the devices of processes that died and do not come back.
        match control.foreign_live_devices().await {
            Ok(snapshot) => control.note_foreign_devices(&snapshot),
            Err(e) => tracing::warn!(
                error = %e,
                "cannot read other processes' live devices: a device of a process that died \
                 and reconnects here gets a second onConnect"
            ),
        }
        let last_beat = crate::runtime::webhooks::LastBeat::default();
        crate::runtime::webhooks::spawn_reaper(control.clone(), last_beat.clone());
        let media = crate::runtime::media::spawn(shards, control.clone())?;
        // Control's one door to the media plane; signaling and the SIP bridge reach it only
        // through control's verbs.
        let port: Arc<dyn crate::control::port::MediaPort> = Arc::new(media.clone());
        if !control.attach_media(port.clone()) {
            anyhow::bail!("a media plane is attached to control already");
        }
        // On PostgreSQL, changes made through other processes reach this one's devices, and
        // each session is hosted by one process.
        if url.starts_with("postgres") {
            control.enable_placement();
            if let Err(e) = crate::runtime::doorbell::spawn(control.clone(), &url).await {
                // One process alone needs no doorbell (a pooler in transaction mode has no
                // LISTEN): say what it costs, and serve.
                tracing::warn!(
                    error = %e,
                    "cannot listen for other processes' changes: a change made through another \
                     process on this database does not reach this one's devices"
                );
            }
        }
        let devices = DeviceControl::new(control.clone(), port);
        let rtp_ip = public_ips.first().copied().unwrap_or_else(|| {
            reach::advertised(&[], config.sip_listen)
                .first()
                .map_or(std::net::Ipv4Addr::LOCALHOST.into(), SocketAddr::ip)
        });
        let sip_settings = SipSettings {
            media_ip: rtp_ip,
            rtp_ports: config.rtp_ports,
            stream_alias: Some(config.phone_stream_alias.clone()),
            tcp: sip_tcp_settings(&config.listeners),
            hold_tone_hz: config.phone_hold_tone,
            keep_calls_on_stop: config.drain_phones == crate::config::DrainPhones::Keep,
            successor_wait: (config.phone_successor_wait > 0)
                .then(|| std::time::Duration::from_secs(config.phone_successor_wait)),
            proxy_elsewhere: config.sip_ingress == crate::config::SipIngress::Proxy,
            rtp_timeout: std::time::Duration::from_secs(config.phone_rtp_timeout),
        };
        let sip = crate::runtime::sip::bind(config.sip_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind SIP {}: {e}", config.sip_listen))?;
        // Where the other processes on this database reach this one (issue 20). Before the
        // SIP bridge starts: it takes over the stored calls whose owner is this address.
        control.set_address(instance_address(
            http_addr,
            tls.is_some(),
            config.cluster_address.as_deref(),
            sip.local_addr(),
        ));
        let sip = sip.start(sip_settings, devices.clone());
        let peers = crate::runtime::listen::Peers::default();
        // Before serving: leases and this process's start are in the database's clock.
        if control.places_sessions() {
            if let Err(e) = control.measure_clock(crate::store::epoch_ms()).await {
                tracing::warn!(error = %e, "cannot read the database's clock");
            }
        }
        if control.places_sessions() && control.address().cluster.is_none() {
            tracing::warn!(
                "no --cluster-address (the --listen address is unspecified or loopback): \
                 other processes on this database cannot carry devices here, so sessions go to \
                 the processes they can reach"
            );
        }
        crate::runtime::webhooks::spawn_heartbeat(control.clone(), peers.clone(), last_beat);
        crate::runtime::media::spawn_quality_recorder(control.clone());
        let metrics = if let Some(handle) = metrics_handle {
            crate::runtime::metrics::spawn_upkeep(handle.clone());
            Some(crate::runtime::metrics::Scrape::new(
                handle,
                Arc::new(StoreGauges(sql_store)),
                media.clone(),
            ))
        } else {
            None
        };
        let metrics_listener =
            match (config.telemetry.metrics, config.telemetry.metrics_listen) {
                (true, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr} (--metrics-listen): {e}")
                })?),
                _ => None,
            };
        let addresses = reach::Addresses {
            http: http_addr,
            media: media_addrs,
            media_tcp: media_tcp_addrs,
            sip: sip.local_addr(),
            rtp_ip,
            rtp_ports: config.rtp_ports,
            loopback_only: public_ips.is_empty() && config.media_listen.ip().is_unspecified(),
        };
        // Last, once every listener is bound: a start that fails earlier (a port taken, no
        // STUN answer) creates nothing, so the next start creates and prints the account.
        let dev_credentials = if config.dev_account && embedded && store.account_count().await? == 0
        {
            Some(
                control
                    .create_account(AccountId::parse(DEV_ACCOUNT)?)
                    .await?,
            )
        } else {
            None
        };
        let no_account = dev_credentials.is_none() && store.account_count().await? == 0;
        Ok(App {
            _serving: serving,
            control,
            media,
            devices,
            listener,
            tls,
            http_addr,
            media_public_addr,
            sip,
            addresses,
            turn,
            auth_failures: api::AuthFailures::new(config.auth_failure_limits()),
            http: http_settings(&config.listeners),
            origins: signaling::OriginPolicy::new(&config.listeners.allowed_origins),
            ws_idle_timeout: secs(config.listeners.ws_idle_timeout),
            drain_timeout: secs(config.drain_timeout),
            metrics,
            metrics_listener,
            dev_credentials,
            no_account,
            peers,
        })
    }

    /// The bound address of the HTTP server (REST and the device WebSocket).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Whether the HTTP listener speaks TLS (https and wss) rather than plain http and ws.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The orchestrator of this server.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// The media plane, as control's port drives it (for tests of the port).
    pub fn media(&self) -> &MediaHandle {
        &self.media
    }

    /// The media address of the first shard (an ICE host candidate devices are told).
    pub fn media_public_addr(&self) -> SocketAddr {
        self.media_public_addr
    }

    /// Every address a device or phone is told to use (printed at startup).
    pub fn addresses(&self) -> &reach::Addresses {
        &self.addresses
    }

    /// The address of the SIP bridge (UDP and TCP).
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip.local_addr()
    }

    /// The address `/metrics` is served on by a listener of its own (`--metrics-listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The media address of every shard.
    pub fn media_public_addrs(&self) -> &[SocketAddr] {
        self.media.public_addrs()
    }

    /// Serves until `shutdown` completes, then drains (see [`drain`]) and lets in-flight
    /// requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let control = self.control.clone();
        let signaling = signaling::router(SignalingState {
            devices: self.devices,
            origins: self.origins,
            idle_timeout: self.ws_idle_timeout,
        });
        let router = api::router(AppState {
            control: self.control,
        })
        .merge(signaling);
        let router = match self.turn {
            Some(turn) => router.layer(axum::Extension(turn)),
            None => router,
        };
        let metrics_on = self.metrics.is_some();
        // `/metrics` on the API listener, unless it has a listener of its own.
        let (router, metrics_server) = match (self.metrics, self.metrics_listener) {
            (Some(scrape), Some(listener)) => (
                router,
                Some((listener, crate::runtime::metrics::router(scrape))),
            ),
            (Some(scrape), None) => (router.merge(crate::runtime::metrics::router(scrape)), None),
            (None, _) => (router, None),
        };
        let router = router.layer(axum::Extension(self.auth_failures));
        // Per route (the route template is known only inside the router).
        let router = if metrics_on {
            router.layer(crate::runtime::metrics::TrackHttpLayer)
        } else {
            router
        };
        // Outermost first: a sane id for each request, the id on the response, then the
        // request's scope (its id in log lines and error bodies) and its response's log line.
        let router = router.layer(
            tower::ServiceBuilder::new()
                .map_request(request_log::drop_insane_request_id)
                .layer(request_log::set_request_id())
                .layer(request_log::propagate_request_id())
                .layer(request_log::RequestLogLayer),
        );
        // Routing sees the path with duplicated leading slashes folded (`//v3/` from SDKs
        // given a base URL that ends in '/').
        let app = tower::ServiceExt::map_request(router, fold_leading_slashes);
        let sip = self.sip.clone();
        let drain_timeout = self.drain_timeout;
        let shutdown = async move {
            shutdown.await;
            drain(&control, &sip, drain_timeout).await;
        };
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_metrics.send(true);
        };
        let metrics_task = metrics_server.map(|(listener, router)| {
            crate::runtime::metrics::serve(listener, router, self.http, metrics_stopped)
        });
        crate::runtime::http::serve(
            self.listener,
            app,
            self.http,
            self.tls,
            self.peers,
            shutdown,
        )
        .await;
        if let Some(task) = metrics_task {
            let _ = task.await;
        }
        Ok(())
    }
}

/// The graceful stop. Control starts draining (`/readyz` answers 503; new device connections
/// are closed with 1013 "server draining", new calls answered 503); connected devices and
/// calls keep going until they have all left or `timeout` has passed. Then phones get BYE and
/// browsers a close with 1001 "server shutting down" (the SDK keeps reconnecting; this
/// process's successor on the same ports and database resumes their calls),
/// and the stop waits a few seconds for both, then (at most 10 s) until every lifecycle event
/// raised is in the webhook outbox, before HTTP stops. Acknowledged state is in the store all
/// along.
#[allow(clippy::disallowed_methods)] // the app owns shutdown and its waits
async fn drain(control: &Control, sip: &SipHandle, timeout: std::time::Duration) {
    use tokio::time::{sleep, Instant};
    const POLL: std::time::Duration = std::time::Duration::from_millis(100);
    const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
    const EVENTS_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    control.begin_drain();
    tracing::info!(
        devices = control.live_devices(),
        drain_timeout_s = timeout.as_secs(),
        "draining: /readyz answers 503 and new devices and calls are refused; connected ones \
         are closed once they have left or after the drain timeout (a second signal stops now)"
    );
    let deadline = Instant::now() + timeout;
    while control.live_devices() > 0 && Instant::now() < deadline {
        sleep(POLL.min(deadline - Instant::now())).await;
    }
    let remaining = control.live_devices();
    tracing::info!(devices = remaining, "closing what is still connected");
    sip.shutdown();
    control.stop_devices();
    let deadline = Instant::now() + CLOSE_WAIT;
    let _ = tokio::time::timeout(CLOSE_WAIT, sip.stopped()).await;
    while control.live_devices() > 0 && Instant::now() < deadline {
        sleep(POLL).await;
    }
    // The events of those closings (onDisconnect, onCallEnded...) are in the outbox before
    // the process goes, so the next process delivers them.
    let deadline = Instant::now() + EVENTS_WAIT;
    while control.events_unsettled() > 0 && Instant::now() < deadline {
        sleep(POLL.min(deadline - Instant::now())).await;
    }
    let unsettled = control.events_unsettled();
    if unsettled > 0 {
        tracing::warn!(
            events = unsettled,
            "stopping with lifecycle events not yet in the outbox (the database is slow or \
             unavailable): their webhooks are lost"
        );
    }
    if let Err(e) = control.forget_live().await {
        tracing::warn!(error = %e, "cannot clear this process's live state");
    }
    tracing::info!(devices = control.live_devices(), "drained: stopping");
}

/// The database gauges of the metrics, read from the store.
struct StoreGauges(Arc<store::SqlStore>);

#[async_trait::async_trait]
impl crate::runtime::metrics::DatabaseGauges for StoreGauges {
    fn pools(&self) -> Vec<crate::runtime::metrics::PoolGauge> {
        self.0
            .pool_stats()
            .into_iter()
            .map(|p| crate::runtime::metrics::PoolGauge {
                name: p.name,
                in_use: p.in_use,
                idle: p.idle,
            })
            .collect()
    }

    async fn rows(&self) -> anyhow::Result<crate::runtime::metrics::RowGauges> {
        use crate::store::WebhookStore;
        let rows = self.0.row_counts().await?;
        let outbox_pending = self.0.outbox_pending().await?;
        Ok(crate::runtime::metrics::RowGauges {
            sessions: rows.sessions,
            participants: rows.participants,
            outbox_pending,
        })
    }
}

/// Where the other processes reach this one: its device WebSocket at `--cluster-address` (with
/// the bound HTTP port when it names no port), or at the bound HTTP address when that is a
/// specific, non-loopback one; its SIP listener, at its bound address or, when that is
/// unspecified, at the cluster address's host.
fn instance_address(
    http: SocketAddr,
    tls: bool,
    cluster: Option<&str>,
    sip: SocketAddr,
) -> crate::store::InstanceRecord {
    let scheme = if tls { "wss" } else { "ws" };
    let reach = match cluster {
        Some(a) => match a.parse::<axum::http::uri::Authority>() {
            Ok(authority) if authority.port().is_none() => Some(format!("{a}:{}", http.port())),
            _ => Some(a.to_owned()),
        },
        None if !http.ip().is_unspecified() && !http.ip().is_loopback() => Some(http.to_string()),
        None => None,
    };
    let sip = if !sip.ip().is_unspecified() {
        Some(sip.to_string())
    } else {
        reach
            .as_deref()
            .and_then(|r| r.parse::<axum::http::uri::Authority>().ok())
            .map(|a| {
                let host = a.host();
                format!("{host}:{}", sip.port())
            })
    };
    crate::store::InstanceRecord {
        http: http.to_string(),
        cluster: reach.map(|r| format!("{scheme}://{r}")),
        sip,
        draining: false,
    }
}

fn secs(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs(n)
}

/// The HTTP listener's limits; an unset connection cap takes half of the open-file limit.
fn http_settings(args: &ListenerArgs) -> HttpSettings {
    HttpSettings {
        header_timeout: secs(args.http_header_timeout),
        body_timeout: secs(args.http_body_timeout),
        idle_timeout: secs(args.http_idle_timeout),
        limits: ConnectionLimits {
            max_total: args
                .http_max_connections
                .unwrap_or_else(|| descriptor_share(0.5, 16_384)),
            max_per_source: args.http_max_connections_per_ip,
            reserve: HEALTH_RESERVE,
        },
    }
}

/// The SIP TCP listener's limits; an unset connection cap takes an eighth of the open-file
/// limit.
fn sip_tcp_settings(args: &ListenerArgs) -> SipTcpSettings {
    SipTcpSettings {
        head_timeout: secs(args.sip_tcp_head_timeout),
        idle_timeout: secs(args.sip_tcp_idle_timeout),
        limits: ConnectionLimits {
            max_total: args
                .sip_tcp_max_connections
                .unwrap_or_else(|| descriptor_share(0.125, 4_096)),
            max_per_source: args.sip_tcp_max_connections_per_ip,
            reserve: 0,
        },
    }
}

/// Socket buffers of the media socket: bursts (keyframes fanned out to 19 subscribers) must
/// not overflow the kernel's default of about 200 KiB while the engine is busy.
const MEDIA_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

fn bind_media_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(MEDIA_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Binds shard `shard`'s ICE-TCP listener as `--media-tcp-listen` says; `udp` is the shard's
/// bound UDP address. `same` takes the UDP address and port; when the UDP port was chosen by
/// the system (`any_port`: `--media-listen` port 0) and that TCP port is taken, any free TCP
/// port.
async fn bind_media_tcp(
    setting: reach::MediaTcpListen,
    udp: SocketAddr,
    any_port: bool,
    shard: usize,
) -> anyhow::Result<Option<TcpListener>> {
    let addr = match setting {
        reach::MediaTcpListen::Off => return Ok(None),
        reach::MediaTcpListen::Same => udp,
        reach::MediaTcpListen::Addr(mut addr) => {
            if addr.port() != 0 {
                let port = u16::try_from(usize::from(addr.port()) + shard)
                    .map_err(|_| anyhow::anyhow!("media TCP ports run past 65535"))?;
                addr.set_port(port);
            }
            addr
        }
    };
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(listener)),
        Err(_) if setting == reach::MediaTcpListen::Same && any_port => {
            let mut any = addr;
            any.set_port(0);
            Ok(Some(TcpListener::bind(any).await.map_err(|e| {
                anyhow::anyhow!("cannot listen on media TCP {any}: {e}")
            })?))
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot listen on media TCP {addr}: {e} (--media-tcp-listen off disables ICE over TCP)"
        )),
    }
}

/// The media addresses to advertise for a socket bound to `bound`: the `--public-ip`
/// addresses it can receive on (see [`reach::advertised`]); an error when none can be.
fn advertised_media_addrs(
    public_ips: &[std::net::IpAddr],
    bound: SocketAddr,
) -> anyhow::Result<Vec<SocketAddr>> {
    let (usable, unusable): (Vec<std::net::IpAddr>, Vec<std::net::IpAddr>) = public_ips
        .iter()
        .copied()
        .partition(|ip| reach::receivable(*ip, bound));
    if !public_ips.is_empty() && usable.is_empty() {
        anyhow::bail!(
            "the media socket {bound} cannot receive on --public-ip {unusable:?}: \
             listen on their address family (--media-listen [::]:PORT takes IPv4 and IPv6)"
        );
    }
    if !unusable.is_empty() {
        tracing::warn!(addresses = ?unusable, socket = %bound, "--public-ip addresses of another address family than the media socket are not advertised");
    }
    Ok(reach::advertised(public_ips, bound))
}

fn fold_leading_slashes(mut req: axum::extract::Request) -> axum::extract::Request {
    let path = req.uri().path();
    if path.starts_with("//") {
        let folded = format!("/{}", path.trim_start_matches('/'));
        let mut parts = req.uri().clone().into_parts();
        let pq = match req.uri().query() {
            Some(q) => format!("{folded}?{q}"),
            None => folded,
        };
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = axum::http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    req
}

/// Why the database `url` could not be opened, with the cause a user can act on: an SQLite
/// file that is not there (and a URL that does not ask to create it), or a PostgreSQL server
/// that cannot be reached (the pool says only that it timed out; a direct connection says why).
async fn open_failure(url: &str, e: &store::StoreError) -> anyhow::Error {
    let mut message = format!("cannot open database {}: {e}", redact(url));
    if let Some(path) = crate::config::sqlite_file(url) {
        if !path.exists() && !url.contains("mode=rwc") {
            message.push_str(&format!(
                "; {} does not exist: add ?mode=rwc to the URL to create it (or use \
                 --data-dir, which does)",
                path.display()
            ));
        }
    } else if let Some((host, port)) = postgres_server(url) {
        let probe = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await;
        match probe {
            Ok(Err(io)) => message.push_str(&format!("; {host}:{port}: {io}")),
            Err(_) => message.push_str(&format!("; {host}:{port} does not answer")),
            Ok(Ok(_)) => message.push_str(&format!(
                "; {host}:{port} accepts connections: check the user, the password and the \
                 database name in the URL (create the database with createdb if it is new)"
            )),
        }
    }
    anyhow::anyhow!(message)
}

/// The TCP server a `postgres://` URL names (port 5432 when it gives none); `None` for other
/// URLs and for a Unix socket.
fn postgres_server(url: &str) -> Option<(String, u16)> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return None;
    }
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str().filter(|h| !h.is_empty())?.to_owned();
    Some((
        host.trim_matches(['[', ']']).to_owned(),
        parsed.port().unwrap_or(5432),
    ))
}

/// A database URL without its passwords, for messages: the one in its userinfo
/// (`user:***@`) and any `password` or `sslpassword` query parameter (`password=***`).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => match base[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &base[..s + 3], &base[at..]),
            None => base.to_owned(),
        },
        _ => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("password")
                        || key.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod redact_tests {
    use super::redact;

    #[test]
    fn passwords_in_the_userinfo_and_the_query_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/pb?sslmode=require&password=q&sslpassword=k"),
            "postgres://app:***@db:5432/pb?sslmode=require&password=***&sslpassword=***"
        );
        assert_eq!(
            redact("postgres://db/pb?user=app&Password=x"),
            "postgres://db/pb?user=app&Password=***"
        );
        assert_eq!(
            redact("sqlite://data/pb.db?mode=rwc"),
            "sqlite://data/pb.db?mode=rwc"
        );
        assert_eq!(redact("postgres://app@db/pb"), "postgres://app@db/pb");
    }
}

#[cfg(test)]
mod cluster_address_tests {
    use super::instance_address;

    fn addr(s: &str) -> std::net::SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_cluster_address_defaults_to_a_specific_non_loopback_listen_address() {
        let sip = addr("0.0.0.0:5060");
        let none = |http: &str| instance_address(addr(http), false, None, sip).cluster;
        assert_eq!(none("0.0.0.0:8080"), None);
        assert_eq!(
            none("127.0.0.1:8080"),
            None,
            "loopback reaches no other machine"
        );
        assert_eq!(none("10.0.0.5:8080").as_deref(), Some("ws://10.0.0.5:8080"));
        let tls = instance_address(addr("10.0.0.5:8443"), true, None, sip);
        assert_eq!(tls.cluster.as_deref(), Some("wss://10.0.0.5:8443"));
        assert_eq!(tls.sip.as_deref(), Some("10.0.0.5:5060"));
    }

    #[test]
    fn a_cluster_address_without_a_port_takes_the_bound_one() {
        let given = instance_address(
            addr("0.0.0.0:8080"),
            false,
            Some("node-1.internal"),
            addr("0.0.0.0:5070"),
        );
        assert_eq!(given.cluster.as_deref(), Some("ws://node-1.internal:8080"));
        assert_eq!(given.sip.as_deref(), Some("node-1.internal:5070"));
        let with_port = instance_address(
            addr("0.0.0.0:8080"),
            false,
            Some("[fd00::5]:9000"),
            addr("192.0.2.1:5060"),
        );
        assert_eq!(with_port.cluster.as_deref(), Some("ws://[fd00::5]:9000"));
        assert_eq!(with_port.sip.as_deref(), Some("192.0.2.1:5060"));
    }
}
