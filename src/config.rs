//! The command line: `patchbay serve`, `patchbay account create` and `patchbay config print`.
//! Every flag has an environment variable and a config-file key ([`crate::config_file`]); defaults just work (an embedded SQLite database in the local data
//! directory, HTTP on 127.0.0.1:8080).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::api::{AuthFailureLimits, TurnServers};
use crate::reach::PublicIp;

// clap turns the doc comments of these types into help text: keep each to one paragraph (a
// longer one becomes the long help of `patchbay --help`).
/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "patchbay",
    version,
    about = "Server-authoritative WebRTC call control (Bandwidth WebRTC compatible)"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: REST API, device signalling, media and SIP dial-in.
    Serve(Box<ServeConfig>),
    /// Manage accounts (works while a server runs on the same database).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Look at sessions: members, live devices and calls, who hears whom (works while servers
    /// run on the same database).
    #[command(subcommand)]
    Session(SessionCommand),
    /// Look at the serving processes sharing the database (works while they run).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Rotate the secret that signs device tokens (works while servers run on it).
    #[command(subcommand, name = "token-secret")]
    TokenSecret(TokenSecretCommand),
    /// The configuration file and the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// The commands under `patchbay config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of `patchbay serve` with the same flags, environment
    /// and config file, as TOML with each value's source; secrets are hidden.
    Print(Box<ServeConfig>),
    /// Print a commented config file with every setting at its default (the repository's
    /// `deploy/patchbay.toml`).
    Example,
}

/// The parsed command line with the config file layered in (see [`crate::config_file`]).
pub struct Parsed {
    /// The command.
    pub cli: Cli,
    /// What clap matched, for `config print`.
    pub matches: clap::ArgMatches,
    /// The settings that came from the config file.
    pub from_file: std::collections::BTreeSet<String>,
}

impl Cli {
    /// Parses the process's command line, environment and config file; exits with a message
    /// (status 2) when they are wrong, like clap does for a bad flag.
    pub fn parse_layered() -> Parsed {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command();
        let layered = crate::config_file::layer(
            &command,
            std::env::args_os().collect(),
            |name: &std::ffi::OsStr| std::env::var_os(name),
        )
        .unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(2)
        });
        let matches = command.get_matches_from(layered.args);
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        Parsed {
            cli,
            matches,
            from_file: layered.from_file,
        }
    }
}

/// The commands under `patchbay account`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account and print its API credentials (only a hash of the password is kept).
    Create {
        /// The account id used in API paths: 1 to 12 characters of A-Z, a-z, 0-9, '_', '-'.
        account_id: String,
        /// Print `{"accountId": …, "username": …, "password": …, "webhookSecret": …}` instead of text.
        #[arg(long)]
        json: bool,
        /// The database holding the account.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List the accounts with their usernames and how many sessions and participants each has.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Replace an account's webhook secret with a new random one, printed once. For the grace
    /// period deliveries are signed with the old secret too (Standard Webhooks: two
    /// signatures in one header), so receivers can switch without missing an event.
    RotateWebhookSecret {
        /// The account id.
        account_id: String,
        /// Seconds the old secret still signs deliveries (0: it stops at once, for a leaked
        /// secret; at most 30 days).
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(0..=2_592_000))]
        grace: u64,
        /// Print `{"accountId": …, "webhookSecret": …}` instead of text.
        #[arg(long)]
        json: bool,
        /// The database holding the account.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Replace an account's API credentials with new random ones, printed once; the old ones
    /// stop working (on running servers within 5 seconds). The webhook secret is unchanged.
    Rotate {
        /// The account id.
        account_id: String,
        /// Print `{"accountId": …, "username": …, "password": …}` instead of text.
        #[arg(long)]
        json: bool,
        /// The database holding the account.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// The commands under `patchbay session`.
#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List sessions with their member counts and live devices and calls.
    List {
        /// Only this account's sessions.
        #[arg(long)]
        account: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Show a session: its members, their live devices and calls, the streams they publish,
    /// and who hears whom (the forwarding table compiled from the rules and those streams).
    Inspect {
        /// The session's account.
        account_id: String,
        /// The session id.
        session_id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// The commands under `patchbay cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the serving processes: their addresses, when each was last seen and whether it
    /// counts as alive, draining or taken for dead, its live devices and hosted sessions.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// The commands under `patchbay token-secret`.
#[derive(Debug, Subcommand)]
pub enum TokenSecretCommand {
    /// Replace the device-token secret with a new random one. Tokens signed with the old one
    /// keep working for the grace period (0: they stop at once, for a leaked secret); running
    /// servers sign new tokens with the new secret within 10 seconds.
    Rotate {
        /// Seconds the old secret still verifies tokens (default and most: a token's whole
        /// lifetime, 86400; a longer grace would verify no token more).
        #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(0..=86_400))]
        grace: u64,
        /// The database.
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Where state lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite://PATH` or `postgres://…`. Default: an SQLite file in the data directory,
    /// created on first start.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The local data directory for the default database.
    /// Default: the platform's local data directory (e.g. ~/.local/share/patchbay).
    #[arg(long, env = "PATCHBAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The URL to open, and whether it is the embedded default.
    pub fn resolve(&self) -> anyhow::Result<(String, bool)> {
        if let Some(url) = &self.database_url {
            return Ok((url.clone(), false));
        }
        let dir = self.data_dir()?;
        let db = dir.join("patchbay.db");
        create_private_data_dir(&dir, &db)?;
        Ok((format!("sqlite://{}?mode=rwc", db.display()), true))
    }
}

impl DatabaseArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(d) => Ok(d.clone()),
            None => directories::ProjectDirs::from("", "", "patchbay")
                .map(|p| p.data_local_dir().to_path_buf())
                .ok_or_else(|| {
                    anyhow::anyhow!("no home directory; pass --data-dir or --database-url")
                }),
        }
    }

    /// The URL of a database that exists already, for the operator commands that read one
    /// (they must not answer from a new, empty database made by a forgotten flag): an SQLite
    /// file that is not there is refused, naming it and where the name came from.
    pub fn resolve_existing(&self) -> anyhow::Result<String> {
        if let Some(url) = &self.database_url {
            if let Some(path) = sqlite_file(url) {
                if !path.exists() {
                    anyhow::bail!(
                        "no database at {} (from --database-url/DATABASE_URL): give the URL the \
                         server uses",
                        path.display()
                    );
                }
            }
            return Ok(url.clone());
        }
        let db = self.data_dir()?.join("patchbay.db");
        if !db.exists() {
            let whence = if self.data_dir.is_some() {
                "from --data-dir/PATCHBAY_DATA_DIR"
            } else {
                "the default data directory"
            };
            anyhow::bail!(
                "no patchbay database at {} ({whence}): give the server's --data-dir or \
                 --database-url (a systemd install: --data-dir /var/lib/patchbay, as the user \
                 patchbay)",
                db.display()
            );
        }
        Ok(format!("sqlite://{}", db.display()))
    }
}

/// The file an `sqlite:` URL names, if it names one (not `:memory:`).
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && !path.starts_with(":memory:")).then(|| PathBuf::from(path))
}

/// Creates the data directory (mode 0700) and the database file (0600) if they are absent,
/// and tightens them, and the database's `-wal` and `-shm` files, if they are looser: the
/// database holds the device-token signing secret. SQLite creates `-wal` and `-shm` with the
/// database file's mode. A looser mode is fixed rather than refused (these are patchbay's own
/// files; nobody else should need to read them) and the fix is logged.
#[cfg(unix)]
fn create_private_data_dir(dir: &std::path::Path, db: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

    fn tighten(path: &std::path::Path, allowed: u32) -> anyhow::Result<()> {
        let cannot = |e: std::io::Error| anyhow::anyhow!("cannot secure {}: {e}", path.display());
        let mode = std::fs::metadata(path)
            .map_err(cannot)?
            .permissions()
            .mode()
            & 0o777;
        if mode & !allowed != 0 {
            let fixed = mode & allowed;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(fixed))
                .map_err(cannot)?;
            tracing::warn!(
                path = %path.display(),
                "was mode {mode:03o}, open to other users; set to {fixed:03o} (it holds the token-signing secret)"
            );
        }
        Ok(())
    }

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    tighten(dir, 0o700)?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create database {}: {e}", db.display()),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        if path.exists() {
            tighten(&path, 0o600)?;
        }
    }
    Ok(())
}

/// Elsewhere, the platform's defaults apply.
#[cfg(not(unix))]
fn create_private_data_dir(dir: &std::path::Path, _db: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))
}

/// `patchbay serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// A TOML config file whose keys are these flags' long names with underscores
    /// (`media_listen = "0.0.0.0:3478"`); the environment and flags override it.
    #[arg(long, env = "PATCHBAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP address for the REST API and the device WebSocket (port 0: any free port).
    #[arg(long, env = "PATCHBAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    // Issue 11, TLS: https and wss on the --listen address (runtime::tls).
    /// PEM certificate chain (leaf first) for https and wss on --listen; needs --tls-key.
    /// Read once at startup: a renewed certificate takes a restart.
    #[arg(
        long,
        env = "PATCHBAY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; needs --tls-cert.
    #[arg(
        long,
        env = "PATCHBAY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Where the server's state lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// On a start with the embedded database (no --database-url) and no account yet, create
    /// the account `dev` and print its credentials once, after the server is up (`false`:
    /// create none; make accounts with `patchbay account create`, as production does).
    #[arg(long, env = "PATCHBAY_DEV_ACCOUNT", default_value_t = true, action = clap::ArgAction::Set)]
    pub dev_account: bool,
    /// Estimate each subscriber's link from its transport-wide congestion feedback and pause
    /// the video it cannot carry, keeping its audio (issue 21; BENCHMARKS.md, "A thin
    /// subscriber"): a track is paused only when the estimate fell and the subscriber reports
    /// loss; a video track with one viewer is not paused but its publisher capped by REMB to
    /// that viewer's estimate (BENCHMARKS.md, "One viewer"). Off by default: with it on, str0m
    /// paces each subscriber's media to its estimate, and a subscriber sent far more than the
    /// estimate has part of its video late until the estimate catches up (1 x 20 all-video:
    /// p99 up to 0.46 s against 35 ms without; BENCHMARKS.md, "One viewer"). It costs 1.06 to
    /// 1.33 times the CPU per forwarded packet at moderate load, and a 1 x 20 all-video session
    /// overloads its core with it on the test machine (BENCHMARKS.md, "Estimation on, next to
    /// Janus"). `false`: every subscriber is sent everything it subscribes to.
    #[arg(long, env = "PATCHBAY_SUBSCRIBER_BWE", default_value_t = false, action = clap::ArgAction::Set)]
    pub subscriber_bwe: bool,
    /// UDP address of the media plane (ICE-lite, DTLS-SRTP). With several shards, shard `i`
    /// binds this port + `i` (port 0: any free port for each).
    #[arg(long, env = "PATCHBAY_MEDIA_LISTEN", default_value = "0.0.0.0:3478")]
    pub media_listen: SocketAddr,
    /// Media shards: engines running in parallel, each with its own UDP socket; a session
    /// lives on one. Default: one per CPU core.
    #[arg(long, env = "PATCHBAY_MEDIA_SHARDS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub media_shards: Option<u16>,
    /// ICE over TCP (RFC 6544 passive candidates, RFC 4571 framing) for devices whose UDP is
    /// blocked: `same` listens on each shard's UDP address and port (with --media-listen port
    /// 0: any free TCP port if that one is taken), `off` disables it, ADDR:PORT listens there
    /// (shard `i` on port + `i`).
    #[arg(long, env = "PATCHBAY_MEDIA_TCP_LISTEN", default_value = "same")]
    pub media_tcp_listen: crate::reach::MediaTcpListen,
    // Issue 11, reachable media: the advertised addresses (see `reach`) and TURN.
    /// IP addresses devices and phones reach the media plane at, each an ICE host candidate
    /// (repeatable or comma-separated, IPv4 and IPv6); `auto` asks the --stun-server. Default:
    /// the media listen address, or 127.0.0.1 (with a warning) when that is unspecified.
    #[arg(long, env = "PATCHBAY_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<PublicIp>,
    /// The STUN server `--public-ip auto` asks for this host's public address (HOST:PORT).
    #[arg(
        long,
        env = "PATCHBAY_STUN_SERVER",
        default_value = "stun.l.google.com:19302"
    )]
    pub stun_server: String,
    /// A TURN server URL given to browsers with minted credentials (`turn:HOST:PORT`,
    /// `turns:…`; repeatable or comma-separated); needs --turn-secret.
    #[arg(long, env = "PATCHBAY_TURN_URL", value_delimiter = ',')]
    pub turn_url: Vec<String>,
    /// The secret shared with the TURN servers (coturn's `static-auth-secret`).
    #[arg(long, env = "PATCHBAY_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// How long minted TURN credentials stay valid, in seconds (at most one day).
    #[arg(long, env = "PATCHBAY_TURN_CREDENTIAL_LIFETIME", default_value = "86400", value_parser = parse_seconds)]
    pub turn_credential_lifetime: Duration,
    /// SIP address (UDP and TCP) for phone dial-in (port 0: any free port).
    #[arg(long, env = "PATCHBAY_SIP_LISTEN", default_value = "0.0.0.0:5060")]
    pub sip_listen: SocketAddr,
    /// UDP ports for phones' RTP, `LOW-HIGH` inclusive (`0-0`: any free port).
    #[arg(long, env = "PATCHBAY_RTP_PORTS", default_value = "20000-29999", value_parser = parse_port_range)]
    pub rtp_ports: (u16, u16),
    /// The stream alias of the audio a phone publishes.
    #[arg(long, env = "PATCHBAY_PHONE_STREAM_ALIAS", default_value = "phone", value_parser = parse_alias)]
    pub phone_stream_alias: crate::domain::StreamAlias,
    // Issue 10, phones: what a call hears in no session, when a silent leg is dead.
    /// The tone (Hz) a phone hears while its participant is in no session; 0: silence.
    #[arg(long, env = "PATCHBAY_PHONE_HOLD_TONE", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3400))]
    pub phone_hold_tone: u32,
    /// Seconds without RTP or RTCP from a phone that should be sending before its call is
    /// ended (BYE) as a dead leg; 0: never. A call the phone holds is never dead.
    #[arg(long, env = "PATCHBAY_PHONE_RTP_TIMEOUT", default_value_t = 30)]
    pub phone_rtp_timeout: u64,
    /// What a graceful stop does with phone calls the next process can take over (calls over
    /// UDP, established): `keep` leaves them up, so that a new process on the same ports and
    /// database takes them over with no BYE (without one, the phone hears silence until its
    /// own timeout); `hang-up` sends each a BYE (a stop with no successor). Calls over TCP are
    /// always hung up.
    #[arg(long, env = "PATCHBAY_DRAIN_PHONES", value_enum, default_value_t = DrainPhones::Keep)]
    pub drain_phones: DrainPhones,
    /// Seconds a call left up by a graceful stop waits for its successor (a process on the
    /// same SIP address and database, which takes it over); after that, a process serving on
    /// the database ends it: a BYE in the call's dialog, and `onDisconnect` and `onCallEnded`
    /// for its participant. 0: it waits for ever (the phone hears silence until its own
    /// timeout, and the backend gets no end).
    #[arg(long, env = "PATCHBAY_PHONE_SUCCESSOR_WAIT", default_value_t = 30)]
    pub phone_successor_wait: u64,
    /// What this process does with an INVITE for a session another process hosts (several
    /// processes on one PostgreSQL): `proxy` sends it on to the host as a stateless proxy
    /// (RFC 3261 §16.11) and relays the host's answers, so the caller needs to reach only
    /// this address for the INVITE (its ACK, BYE and re-INVITEs go to the host's Contact);
    /// `redirect` answers `302 Moved Temporarily` with the host's SIP address, for callers or
    /// carriers that follow redirects.
    #[arg(long, env = "PATCHBAY_SIP_INGRESS", value_enum, default_value_t = SipIngress::Proxy)]
    pub sip_ingress: SipIngress,
    // Issue 9, database slice: how long a sick database may keep a request waiting.
    /// Bounds on waits for the database.
    #[command(flatten)]
    pub database_timeouts: DatabaseTimeoutArgs,
    // Issue 9, input hygiene: failed HTTP Basic authentication budgets (see api::auth_limit).
    /// Failed REST authentications per minute from one source address (IPv6: per /64) before 429; 0: no limit.
    #[arg(long, env = "PATCHBAY_AUTH_FAILURES_PER_ADDRESS", default_value_t = AuthFailureLimits::DEFAULT.per_address)]
    pub auth_failures_per_address: u32,
    /// Failed REST authentications per minute for one username before 429; 0: no limit.
    #[arg(long, env = "PATCHBAY_AUTH_FAILURES_PER_USERNAME", default_value_t = AuthFailureLimits::DEFAULT.per_username)]
    pub auth_failures_per_username: u32,
    // Issue 10, webhooks slice: delivery of the webhook outbox and session cleanup.
    /// Webhook delivery and session cleanup.
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Listener limits and timeouts (issue 9, listeners slice).
    #[command(flatten)]
    pub listeners: ListenerArgs,
    /// Seconds the first SIGTERM/SIGINT leaves connected devices and calls before they are
    /// closed (browsers: 1001 "server shutting down", phones: BYE); meanwhile /readyz answers
    /// 503 and new devices and calls are refused. A second signal stops at once.
    #[arg(long, env = "PATCHBAY_DRAIN_TIMEOUT", default_value_t = 20)]
    pub drain_timeout: u64,
    /// Metrics and logs (issue 12).
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    // Issue 20: several processes on one PostgreSQL database.
    /// Where the other patchbay processes on this PostgreSQL database reach this one's HTTP
    /// listener, to carry to it the device WebSockets of the sessions it hosts: HOST:PORT, or
    /// HOST alone for the bound --listen port. Default: the bound --listen address unless it
    /// is unspecified (0.0.0.0, [::]) or loopback (127.0.0.1 reaches no other machine); without
    /// one, no new session is placed here while another process can take it, and devices of
    /// sessions hosted here that reach other processes are served there, apart. Unused on
    /// SQLite.
    #[arg(long, env = "PATCHBAY_CLUSTER_ADDRESS", value_parser = parse_cluster_address)]
    pub cluster_address: Option<String>,
}

impl ServeConfig {
    /// Settings for tests: any free port, the given database, webhooks allowed to 127.0.0.1.
    pub fn for_database(url: &str) -> ServeConfig {
        ServeConfig {
            config: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: None,
            tls_key: None,
            database: DatabaseArgs {
                database_url: Some(url.to_owned()),
                data_dir: None,
            },
            dev_account: true,
            subscriber_bwe: false,
            media_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            media_shards: None,
            media_tcp_listen: crate::reach::MediaTcpListen::Same,
            public_ip: Vec::new(),
            stun_server: "stun.l.google.com:19302".to_owned(),
            turn_url: Vec::new(),
            turn_secret: None,
            turn_credential_lifetime: Duration::from_secs(86_400),
            sip_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rtp_ports: (0, 0),
            phone_stream_alias: crate::domain::StreamAlias::parse("phone")
                .unwrap_or_else(|_| unreachable!("a valid alias")),
            phone_hold_tone: 0,
            phone_rtp_timeout: 30,
            drain_phones: DrainPhones::Keep,
            phone_successor_wait: 30,
            sip_ingress: SipIngress::Proxy,
            database_timeouts: DatabaseTimeoutArgs::default(),
            auth_failures_per_address: AuthFailureLimits::DEFAULT.per_address,
            auth_failures_per_username: AuthFailureLimits::DEFAULT.per_username,
            // Test receivers listen on this machine.
            webhooks: WebhookArgs {
                webhook_allow_network: vec![ipnet::IpNet::from(std::net::IpAddr::from([
                    127, 0, 0, 1,
                ]))],
                ..WebhookArgs::default()
            },
            listeners: ListenerArgs::default(),
            drain_timeout: 0,
            telemetry: TelemetryArgs::default(),
            // Processes of one test reach each other on this machine.
            cluster_address: Some("127.0.0.1".to_owned()),
        }
    }

    /// The TURN servers browsers are given credentials for; `None` without --turn-url, an error
    /// for a --turn-url without --turn-secret.
    pub fn turn_servers(&self) -> anyhow::Result<Option<TurnServers>> {
        if self.turn_url.is_empty() {
            return Ok(None);
        }
        let secret = match &self.turn_secret {
            Some(s) if !s.is_empty() => s.clone(),
            _ => anyhow::bail!(
                "--turn-url needs --turn-secret (the TURN server's shared secret, coturn's static-auth-secret)"
            ),
        };
        Ok(Some(TurnServers {
            urls: self.turn_url.clone(),
            secret,
            lifetime: self.turn_credential_lifetime,
        }))
    }

    /// The TLS acceptor of --tls-cert and --tls-key, `None` without them; an error when only
    /// one is given or the files are unusable (the message names the file and the problem).
    pub fn tls(&self) -> anyhow::Result<Option<crate::runtime::tls::TlsAcceptor>> {
        match (&self.tls_cert, &self.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                crate::runtime::tls::TlsAcceptor::from_pem_files(cert, key).map(Some)
            }
            (Some(_), None) => {
                anyhow::bail!("--tls-cert needs --tls-key (the certificate's private key)")
            }
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert (the certificate chain)"),
        }
    }

    /// The failed-authentication budgets of the REST API.
    pub fn auth_failure_limits(&self) -> AuthFailureLimits {
        AuthFailureLimits {
            per_address: self.auth_failures_per_address,
            per_username: self.auth_failures_per_username,
        }
    }
}

// Issue 12: Prometheus metrics and the log format (docs/metrics.md).
/// Metrics and logs.
#[derive(Debug, Clone, Copy, Args)]
pub struct TelemetryArgs {
    /// Serve Prometheus metrics at `GET /metrics` (`false`: no recorder, no route).
    #[arg(long, env = "PATCHBAY_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
    /// Serve `/metrics` on this address instead of the API listener (which then answers 404).
    #[arg(long, env = "PATCHBAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` (human) or `json` (one object per line, for log shippers).
    #[arg(long, env = "PATCHBAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Default for TelemetryArgs {
    fn default() -> TelemetryArgs {
        TelemetryArgs {
            metrics: true,
            metrics_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the request being handled under `request` (`id`,
    /// `method`, `path`).
    Json,
}

// Issue 10, webhooks slice: webhook delivery and session cleanup (docs/webhooks.md).
/// How webhooks are delivered, and when sessions expire.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Seconds after an event during which its webhook is retried; then it is given up.
    #[arg(long, env = "PATCHBAY_WEBHOOK_RETRY_FOR", default_value = "86400", value_parser = parse_seconds)]
    pub webhook_retry_for: Duration,
    /// Seconds one delivery attempt may take (connect, send, answer).
    #[arg(long, env = "PATCHBAY_WEBHOOK_ATTEMPT_TIMEOUT", default_value = "10", value_parser = parse_seconds)]
    pub webhook_attempt_timeout: Duration,
    /// Milliseconds before the first retry; each later wait doubles (with jitter), up to 10 minutes.
    #[arg(long, env = "PATCHBAY_WEBHOOK_FIRST_RETRY_MS", default_value_t = 1000)]
    pub webhook_first_retry_ms: u64,
    /// Delivery attempts in flight at once (one per participant at a time). Each holds a
    /// connection; besides them at most 64 idle connections are kept (2 for each of the 32
    /// receivers used last), so webhooks never hold more than this plus 64 descriptors.
    #[arg(long, env = "PATCHBAY_WEBHOOK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub webhook_concurrency: u16,
    /// A share of the delivery attempts in flight: beyond it, an account, and separately a
    /// receiver (a URL's scheme, host and port), takes only places that leave this many free.
    /// Alone, an account uses all but a share; an account whose receivers hang or fail leaves
    /// a share free, so the other accounts' events still go out at once.
    #[arg(long, env = "PATCHBAY_WEBHOOK_ACCOUNT_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub webhook_account_concurrency: u16,
    /// A network (CIDR, or one address) webhooks may be delivered to besides public
    /// addresses; repeat, or separate with commas. Without it, a `callbackUrl` on loopback, a
    /// private or link-local network or any other special-purpose address is refused (for
    /// example `--webhook-allow-network 10.20.0.0/16` for a backend on the private network,
    /// `127.0.0.1` for one on this machine).
    #[arg(long, env = "PATCHBAY_WEBHOOK_ALLOW_NETWORK", value_delimiter = ',', value_parser = parse_network)]
    pub webhook_allow_network: Vec<ipnet::IpNet>,
    /// Deliver webhooks to any address, private and loopback ones included (an on-premise
    /// deployment whose every account is trusted); `--webhook-allow-network` is the narrower
    /// choice.
    #[arg(long, env = "PATCHBAY_WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub webhook_allow_private: bool,
    /// Seconds delivered and given-up webhook events, and delivery attempts (the delivery
    /// log), are kept; then they are deleted. Events still waiting for delivery are kept.
    #[arg(long, env = "PATCHBAY_WEBHOOK_RETENTION", default_value = "604800", value_parser = parse_retention)]
    pub webhook_retention: Duration,
    /// Seconds after its creation a session is removed (Bandwidth: 9 hours).
    #[arg(long, env = "PATCHBAY_SESSION_MAX_AGE", default_value = "32400", value_parser = parse_seconds)]
    pub session_max_age: Duration,
    /// Seconds after its creation a participant is deleted, as `DELETE …/participants/{id}`
    /// does (its devices are disconnected, its calls end). Default: never; a backend that
    /// forgets to delete its participants can set a day or more (checked every minute).
    #[arg(long, env = "PATCHBAY_PARTICIPANT_MAX_AGE", value_parser = parse_seconds)]
    pub participant_max_age: Option<Duration>,
}

impl Default for WebhookArgs {
    fn default() -> WebhookArgs {
        WebhookArgs {
            webhook_retry_for: Duration::from_secs(86400),
            webhook_attempt_timeout: Duration::from_secs(10),
            webhook_first_retry_ms: 1000,
            webhook_concurrency: 32,
            webhook_account_concurrency: 8,
            webhook_allow_network: Vec::new(),
            webhook_allow_private: false,
            webhook_retention: Duration::from_secs(604_800),
            session_max_age: Duration::from_secs(32400),
            participant_max_age: None,
        }
    }
}

/// A network in CIDR notation, or one address (a /32 or /128).
fn parse_network(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{s:?} is not a network (10.0.0.0/8, fd00::/8) or an address"))
}

impl WebhookArgs {
    /// Where deliveries may go: public addresses and the allowed networks.
    pub fn destinations(&self) -> crate::webhooks::Destinations {
        if self.webhook_allow_private {
            crate::webhooks::Destinations::anywhere()
        } else {
            crate::webhooks::Destinations::new(self.webhook_allow_network.clone())
        }
    }

    /// The attempts in flight these flags allow.
    pub fn concurrency(&self) -> crate::webhooks::Concurrency {
        crate::webhooks::Concurrency {
            total: usize::from(self.webhook_concurrency),
            share: usize::from(self.webhook_account_concurrency),
        }
    }

    /// The retry policy these flags describe.
    pub fn retry_policy(&self) -> crate::webhooks::RetryPolicy {
        crate::webhooks::RetryPolicy {
            initial_delay: Duration::from_millis(self.webhook_first_retry_ms.max(1)),
            max_delay: Duration::from_secs(600),
            max_age: self.webhook_retry_for,
            attempt_timeout: self.webhook_attempt_timeout,
        }
    }
}

// Issue 9, database slice: the database timeouts (docs/security.md).
/// How long requests may wait for a database that does not answer.
#[derive(Debug, Clone, Copy, Args)]
pub struct DatabaseTimeoutArgs {
    /// Longest wait, in seconds, for a database connection; a request that cannot get one
    /// (database refusing connections, unreachable, or every connection busy) is answered
    /// 503 after it.
    #[arg(long, env = "PATCHBAY_DATABASE_ACQUIRE_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub database_acquire_timeout: Duration,
    /// Longest run, in seconds, of one database statement, waits for locks included
    /// (PostgreSQL statement_timeout, SQLite busy_timeout); then the request is answered 503.
    #[arg(long, env = "PATCHBAY_DATABASE_STATEMENT_TIMEOUT", default_value = "5", value_parser = parse_seconds)]
    pub database_statement_timeout: Duration,
}

impl Default for DatabaseTimeoutArgs {
    fn default() -> DatabaseTimeoutArgs {
        let defaults = crate::store::Timeouts::default();
        DatabaseTimeoutArgs {
            database_acquire_timeout: defaults.acquire,
            database_statement_timeout: defaults.statement,
        }
    }
}

impl DatabaseTimeoutArgs {
    /// The store's settings.
    pub fn timeouts(&self) -> crate::store::Timeouts {
        crate::store::Timeouts {
            acquire: self.database_acquire_timeout,
            statement: self.database_statement_timeout,
        }
    }
}

/// Seconds (fractions allowed) from 0.001 to one day.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(0.001..=86_400.0).contains(&seconds) {
        return Err(format!("{s:?}: need 0.001 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Whole seconds from one hour to ten years: how long webhook history is kept.
fn parse_retention(s: &str) -> Result<Duration, String> {
    const MAX: u64 = 10 * 365 * 86_400;
    let seconds: u64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(3_600..=MAX).contains(&seconds) {
        return Err(format!("{s:?}: need 3600 to {MAX} seconds"));
    }
    Ok(Duration::from_secs(seconds))
}

// --- Listeners slice (issue 9): timeouts and connection caps of the HTTP and SIP TCP
// listeners, the device WebSocket's idle timeout and Origin policy. See docs/security.md.

/// Timeouts and caps of the network listeners.
#[derive(Debug, Clone, Args)]
pub struct ListenerArgs {
    /// Seconds a client has to send a request's head, counted from when the server waits for
    /// it (so also how long an idle keep-alive connection stays open).
    #[arg(long, env = "PATCHBAY_HTTP_HEADER_TIMEOUT", default_value_t = ListenerArgs::HTTP_HEADER_TIMEOUT, value_parser = secs)]
    pub http_header_timeout: u64,
    /// Seconds a request body may stall (no bytes) before the request fails.
    #[arg(long, env = "PATCHBAY_HTTP_BODY_TIMEOUT", default_value_t = ListenerArgs::HTTP_BODY_TIMEOUT, value_parser = secs)]
    pub http_body_timeout: u64,
    /// Seconds an HTTP connection may carry no bytes at all (either way) before it is closed.
    #[arg(long, env = "PATCHBAY_HTTP_IDLE_TIMEOUT", default_value_t = ListenerArgs::HTTP_IDLE_TIMEOUT, value_parser = secs)]
    pub http_idle_timeout: u64,
    /// Concurrent HTTP connections (device WebSockets included). Default: half of the open-file
    /// limit, less a headroom, at most 16384.
    #[arg(long, env = "PATCHBAY_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Concurrent HTTP connections from one source network (IPv4: one /24, IPv6: one /64)
    /// while the listener is less than half full; beyond half, a source holds at most an
    /// eighth of the listener's cap (see docs/security.md, "Connection caps").
    #[arg(long, env = "PATCHBAY_HTTP_MAX_CONNECTIONS_PER_IP", default_value_t = ListenerArgs::HTTP_MAX_PER_IP)]
    pub http_max_connections_per_ip: usize,
    /// Seconds a device WebSocket may stay silent: the server pings after half of it and
    /// closes (1001 "idle timeout") after all of it.
    #[arg(long, env = "PATCHBAY_WS_IDLE_TIMEOUT", default_value_t = ListenerArgs::WS_IDLE_TIMEOUT, value_parser = secs)]
    pub ws_idle_timeout: u64,
    /// Origins allowed to open a device WebSocket (comma separated, e.g.
    /// `https://app.example.com`). Default: any (the token is the credential). A request
    /// without an `Origin` header (not a browser) is always allowed.
    #[arg(long, env = "PATCHBAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Seconds a SIP TCP client has for a whole message, from its first byte (or from the
    /// connection's start for the first message).
    #[arg(long, env = "PATCHBAY_SIP_TCP_HEAD_TIMEOUT", default_value_t = ListenerArgs::SIP_TCP_HEAD_TIMEOUT, value_parser = secs)]
    pub sip_tcp_head_timeout: u64,
    /// Seconds a SIP TCP connection may carry no bytes (either way) before it is closed.
    #[arg(long, env = "PATCHBAY_SIP_TCP_IDLE_TIMEOUT", default_value_t = ListenerArgs::SIP_TCP_IDLE_TIMEOUT, value_parser = secs)]
    pub sip_tcp_idle_timeout: u64,
    /// Concurrent SIP TCP connections. Default: an eighth of the open-file limit, less a
    /// headroom, at most 4096.
    #[arg(long, env = "PATCHBAY_SIP_TCP_MAX_CONNECTIONS")]
    pub sip_tcp_max_connections: Option<usize>,
    /// Concurrent SIP TCP connections from one source network (IPv4: one /24, IPv6: one /64)
    /// while the listener is less than half full; beyond half, a source holds at most an
    /// eighth of the listener's cap (see docs/security.md, "Connection caps").
    #[arg(long, env = "PATCHBAY_SIP_TCP_MAX_CONNECTIONS_PER_IP", default_value_t = ListenerArgs::SIP_TCP_MAX_PER_IP)]
    pub sip_tcp_max_connections_per_ip: usize,
}

impl ListenerArgs {
    const HTTP_HEADER_TIMEOUT: u64 = 10;
    const HTTP_BODY_TIMEOUT: u64 = 30;
    const HTTP_IDLE_TIMEOUT: u64 = 120;
    const HTTP_MAX_PER_IP: usize = 256;
    const WS_IDLE_TIMEOUT: u64 = 60;
    const SIP_TCP_HEAD_TIMEOUT: u64 = 10;
    const SIP_TCP_IDLE_TIMEOUT: u64 = 3600;
    const SIP_TCP_MAX_PER_IP: usize = 64;
}

impl Default for ListenerArgs {
    fn default() -> Self {
        ListenerArgs {
            http_header_timeout: Self::HTTP_HEADER_TIMEOUT,
            http_body_timeout: Self::HTTP_BODY_TIMEOUT,
            http_idle_timeout: Self::HTTP_IDLE_TIMEOUT,
            http_max_connections: None,
            http_max_connections_per_ip: Self::HTTP_MAX_PER_IP,
            ws_idle_timeout: Self::WS_IDLE_TIMEOUT,
            allowed_origins: Vec::new(),
            sip_tcp_head_timeout: Self::SIP_TCP_HEAD_TIMEOUT,
            sip_tcp_idle_timeout: Self::SIP_TCP_IDLE_TIMEOUT,
            sip_tcp_max_connections: None,
            sip_tcp_max_connections_per_ip: Self::SIP_TCP_MAX_PER_IP,
        }
    }
}

/// A timeout in whole seconds, at least 1.
fn secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

// --- end of the listeners slice

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not LOW-HIGH"))?;
    let low: u16 = low.trim().parse().map_err(|e| format!("{low:?}: {e}"))?;
    let high: u16 = high.trim().parse().map_err(|e| format!("{high:?}: {e}"))?;
    if low > high || (low == 0) != (high == 0) {
        return Err(format!("{s:?}: need 0-0 or 1 <= LOW <= HIGH"));
    }
    Ok((low, high))
}

/// HOST or HOST:PORT: a host name or an IP address (IPv6 in brackets), and a port other than 0
/// if one is given.
fn parse_cluster_address(s: &str) -> Result<String, String> {
    let authority: axum::http::uri::Authority = s
        .parse()
        .map_err(|_| format!("{s:?} is not HOST or HOST:PORT"))?;
    if authority.as_str().contains('@') || authority.port_u16() == Some(0) {
        return Err(format!("{s:?} is not HOST or HOST:PORT"));
    }
    Ok(authority.as_str().to_owned())
}

fn parse_alias(s: &str) -> Result<crate::domain::StreamAlias, String> {
    crate::domain::StreamAlias::parse(s).map_err(|e| e.to_string())
}

/// What a process does with an INVITE for a session another process hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SipIngress {
    /// Send it on to the host (a stateless proxy) and relay the answers.
    Proxy,
    /// Answer 302 with the host's SIP address.
    Redirect,
}

/// What a graceful stop does with phone calls the next process can take over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrainPhones {
    /// Leave them up for the next process on the same ports and database.
    Keep,
    /// Send each a BYE.
    HangUp,
}
