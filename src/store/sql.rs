//! [`SqlStore`]: the `Store` on SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! Both dialects run the same runtime-checked SQL (numbered `$N` parameters, `ON CONFLICT`,
//! `RETURNING`, ids as canonical text); [`Dialect`] decides only pool layout and connection
//! settings:
//! - SQLite: WAL journal, `synchronous=NORMAL` (a committed transaction survives a process
//!   crash such as `kill -9`; only an OS crash or power loss can lose the last ones), foreign
//!   keys on, a pool of readers and a single writer connection, so writers queue fairly in
//!   process instead of spinning in SQLite's busy handler. Other processes on the same file
//!   (the `account create` command) wait on `busy_timeout`.
//! - PostgreSQL: one pool; concurrent transactions are serialized by row locks (module docs of
//!   `store`). Each connection sets `statement_timeout` to [`Timeouts::statement`].
//!
//! Both pools wait at most [`Timeouts::acquire`] for a connection. [`is_unavailable`] sorts the
//! driver's errors into "cannot answer now" and faults.

use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::{AccountCredentials, Store, StoreError, Timeouts, PROBE_TIMEOUT};
use crate::domain::{
    AccountId, CallbackUrl, DeviceApiVersion, MediaKinds, Participant, ParticipantId,
    ParticipantSubscription, PublishCredentials, Session, SessionId, StoredPhoneCall, StreamAlias,
    SubscribeLayout, Subscriptions, Tag, MAX_SESSION_MEMBERS,
};

/// The SQL dialect behind a [`SqlStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite (`sqlite:` URLs): a single writer connection beside a pool of readers;
    /// migrations in `migrations/sqlite`.
    Sqlite,
    /// PostgreSQL (`postgres://` or `postgresql://` URLs): one pool, migrations in
    /// `migrations/postgres`.
    Postgres,
}

impl Dialect {
    /// The dialect a database URL names by its scheme; `None` for any other scheme.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }
}

/// The store on a SQL database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqlStore {
    dialect: Dialect,
    pub(super) read: AnyPool,
    pub(super) write: AnyPool,
    /// `read` and `write` are one pool (PostgreSQL, in-memory SQLite).
    shared_pool: bool,
    timers: Arc<OpHistograms>,
}

/// Declares [`Op`] from one list of (variant, label), so that the variants, their labels and
/// [`Op::COUNT`] cannot disagree.
macro_rules! store_ops {
    ($($op:ident => $name:literal,)*) => {
        /// The store's operations, each timed into `patchbay_db_query_duration_seconds{op}`
        /// (the `op` label is [`Op::name`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(super) enum Op {
            $($op,)*
        }

        impl Op {
            const COUNT: usize = [$(Op::$op,)*].len();

            /// The `op` label.
            pub(super) fn name(self) -> &'static str {
                match self {
                    $(Op::$op => $name,)*
                }
            }
        }
    };
}

store_ops! {
    RowCounts => "row_counts",
    Ping => "ping",
    CreateAccount => "create_account",
    AccountByUsername => "account_by_username",
    AccountCount => "account_count",
    Secret => "secret",
    CreateSession => "create_session",
    Session => "session",
    DeleteSession => "delete_session",
    CreateParticipant => "create_participant",
    Participant => "participant",
    DeleteParticipant => "delete_participant",
    AddMember => "add_member",
    RemoveMember => "remove_member",
    Members => "members",
    SetSubscriptions => "set_subscriptions",
    WebhookTarget => "webhook_target",
    AccountWebhooks => "account_webhooks",
    SetWebhookBandwidthOnly => "set_webhook_bandwidth_only",
    SetWebhookOptIn => "set_webhook_opt_in",
    RotateWebhookSecret => "rotate_webhook_secret",
    OutboxAppend => "outbox_append",
    RecordEvents => "record_events",
    OutboxDue => "outbox_due",
    OutboxClaim => "outbox_claim",
    OutboxPending => "outbox_pending",
    OutboxAttempted => "outbox_attempted",
    DeliveryLog => "delivery_log",
    PruneWebhooks => "prune_webhooks",
    SessionsCreatedBefore => "sessions_created_before",
    ParticipantsCreatedBefore => "participants_created_before",
    SaveSubscribeLayout => "save_subscribe_layout",
    SubscribeLayout => "subscribe_layout",
    ForgetSubscribeLayout => "forget_subscribe_layout",
    SavePublishCredentials => "save_publish_credentials",
    PublishCredentials => "publish_credentials",
    SavePhoneCall => "save_phone_call",
    PhoneCalls => "phone_calls",
    ForgetPhoneCall => "forget_phone_call",
    TakePhoneCall => "take_phone_call",
    EndPhoneCall => "end_phone_call",
}

/// Each operation's histogram handle, taken from the metrics recorder at the operation's
/// first use by this store and kept: timing an operation then costs an index, not a lookup in
/// the recorder's registry (which cost about 300 instructions per operation). A store opened
/// before a recorder is installed keeps the no-op handles (`App::build` installs first).
pub(super) struct OpHistograms([OnceLock<metrics::Histogram>; Op::COUNT]);

impl Default for OpHistograms {
    fn default() -> Self {
        // `Default` for arrays stops at 32 elements.
        OpHistograms(std::array::from_fn(|_| OnceLock::new()))
    }
}

impl std::fmt::Debug for OpHistograms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpHistograms")
    }
}

impl OpHistograms {
    fn get(&self, op: Op) -> &metrics::Histogram {
        self.0[op as usize].get_or_init(
            || metrics::histogram!("patchbay_db_query_duration_seconds", "op" => op.name()),
        )
    }
}

/// Times one store operation into its histogram when dropped (whatever the outcome; a no-op
/// without a metrics recorder). Made by [`SqlStore::timer`].
pub(super) struct QueryTimer<'a> {
    histogram: &'a metrics::Histogram,
    started: std::time::Instant,
}

impl Drop for QueryTimer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

// The store stamps rows with the wall-clock time of the write.
#[allow(clippy::disallowed_methods)]
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// One connection pool's occupancy, for the metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    /// `read` or `write` (SQLite; one pool serves both on PostgreSQL and in memory: `main`).
    pub name: &'static str,
    /// Connections checked out.
    pub in_use: u32,
    /// Connections open and idle.
    pub idle: u32,
}

/// Rows of the tables the metrics show.
#[derive(Debug, Clone, Copy)]
pub struct RowCounts {
    /// Sessions.
    pub sessions: u64,
    /// Participants.
    pub participants: u64,
}

impl SqlStore {
    /// A timer of `op` (see [`QueryTimer`]).
    // The store reads the monotonic clock to time its own statements, for the metrics only.
    #[allow(clippy::disallowed_methods)]
    pub(super) fn timer(&self, op: Op) -> QueryTimer<'_> {
        QueryTimer {
            histogram: self.timers.get(op),
            started: std::time::Instant::now(),
        }
    }

    /// The pools' occupancy now (no query).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats(name: &'static str, pool: &AnyPool) -> PoolStats {
            let size = pool.size();
            let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size);
            PoolStats {
                name,
                in_use: size - idle,
                idle,
            }
        }
        if self.shared_pool {
            vec![stats("main", &self.write)]
        } else {
            vec![stats("read", &self.read), stats("write", &self.write)]
        }
    }

    /// How many sessions and participants the database holds.
    pub async fn row_counts(&self) -> Result<RowCounts, StoreError> {
        let _timer = self.timer(Op::RowCounts);
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM sessions) AS sessions, (SELECT COUNT(*) FROM participants) AS participants",
        )
        .fetch_one(&self.read)
        .await?;
        let sessions: i64 = row.try_get("sessions")?;
        let participants: i64 = row.try_get("participants")?;
        Ok(RowCounts {
            sessions: sessions.max(0) as u64,
            participants: participants.max(0) as u64,
        })
    }

    /// Connects with the default [`Timeouts`], applies pending migrations and returns the store.
    pub async fn open(url: &str) -> Result<SqlStore, StoreError> {
        SqlStore::open_with(url, Timeouts::default()).await
    }

    /// Connects with the given [`Timeouts`], applies pending migrations and returns the store.
    pub async fn open_with(url: &str, timeouts: Timeouts) -> Result<SqlStore, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            StoreError::Backend(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?} (expected sqlite:… or postgres://…)")
                    .into(),
            ))
        })?;
        let store = match dialect {
            Dialect::Postgres => {
                let statement_ms = timeouts.statement.as_millis();
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(timeouts.acquire)
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            // Every statement on this connection, lock waits included, ends
                            // with SQLSTATE 57014 after this long.
                            conn.execute(
                                format!("SET statement_timeout = {statement_ms}").as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?;
                SqlStore {
                    dialect,
                    read: pool.clone(),
                    write: pool,
                    shared_pool: true,
                    timers: Arc::default(),
                }
            }
            Dialect::Sqlite => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                let write = sqlite_pool(url, 1, timeouts).await?;
                // A private in-memory database exists once per connection: share the writer.
                let read = if memory {
                    write.clone()
                } else {
                    sqlite_pool(url, 4, timeouts).await?
                };
                SqlStore {
                    dialect,
                    read,
                    write,
                    shared_pool: memory,
                    timers: Arc::default(),
                }
            }
        };
        let migrator = match dialect {
            Dialect::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Dialect::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator
            .run(&store.write)
            .await
            .map_err(|e| StoreError::Backend(e.into()))?;
        Ok(store)
    }

    /// Which database this store runs on.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Takes the session's row lock inside `tx`; `SessionNotFound` if it is not the account's.
    async fn lock_session(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET lock_version = lock_version + 1 WHERE id = $1 AND account_id = $2",
        )
        .bind(session.to_string())
        .bind(account.as_str())
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::SessionNotFound);
        }
        Ok(())
    }

    /// Replaces `subscriber`'s rules inside `tx` (the caller checked membership).
    async fn replace_subscriptions(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        account: &AccountId,
        subscriber: ParticipantId,
        subs: &Subscriptions,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE participants SET subscribed_session_id = $1 WHERE id = $2")
            .bind(subs.session_id.map(|s| s.to_string()))
            .bind(subscriber.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM subscriptions WHERE subscriber_id = $1")
            .bind(subscriber.to_string())
            .execute(&mut **tx)
            .await?;
        for (position, ps) in subs.participants.iter().enumerate() {
            let aliases: Vec<&str> = ps.stream_aliases.iter().map(StreamAlias::as_str).collect();
            let aliases = serde_json::to_string(&aliases).map_err(corrupt)?;
            let done = sqlx::query(
                "INSERT INTO subscriptions (subscriber_id, publisher_id, position, stream_aliases) \
                 SELECT $1, id, $2, $3 FROM participants WHERE id = $4 AND account_id = $5",
            )
            .bind(subscriber.to_string())
            .bind(position as i64)
            .bind(aliases)
            .bind(ps.participant.to_string())
            .bind(account.as_str())
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::UnknownPublisher(ps.participant));
            }
        }
        Ok(())
    }

    /// Loads the subscription lists of the given participants, keyed by subscriber.
    async fn subscription_lists(
        &self,
        where_clause: &str,
        key: &str,
    ) -> Result<std::collections::HashMap<ParticipantId, Vec<ParticipantSubscription>>, StoreError>
    {
        let sql = format!(
            "SELECT s.subscriber_id, s.publisher_id, s.stream_aliases FROM subscriptions s \
             JOIN participants p ON p.id = s.subscriber_id WHERE {where_clause} \
             ORDER BY s.subscriber_id, s.position"
        );
        let rows = sqlx::query(&sql).bind(key).fetch_all(&self.read).await?;
        let mut lists: std::collections::HashMap<ParticipantId, Vec<ParticipantSubscription>> =
            Default::default();
        for row in rows {
            let subscriber = parse_id::<ParticipantId>(&row, "subscriber_id")?;
            let publisher = parse_id::<ParticipantId>(&row, "publisher_id")?;
            let aliases: String = row.try_get("stream_aliases")?;
            let aliases: Vec<String> = serde_json::from_str(&aliases).map_err(corrupt)?;
            let stream_aliases = aliases
                .iter()
                .map(|a| StreamAlias::parse(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(corrupt)?;
            lists
                .entry(subscriber)
                .or_default()
                .push(ParticipantSubscription {
                    participant: publisher,
                    stream_aliases,
                });
        }
        Ok(lists)
    }
}

async fn sqlite_pool(url: &str, max: u32, timeouts: Timeouts) -> Result<AnyPool, StoreError> {
    // SQLite has no statement timeout; what can hang a statement is waiting for another
    // process's lock, and the busy timeout bounds that wait (then SQLITE_BUSY).
    let busy_ms = timeouts.statement.as_millis();
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(timeouts.acquire)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute(format!("PRAGMA busy_timeout = {busy_ms}").as_str())
                    .await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                Ok(())
            })
        })
        .connect(url)
        .await?;
    // The journal mode is a property of the file; memory databases keep their own.
    sqlx::query("PRAGMA journal_mode = WAL")
        .fetch_optional(&pool)
        .await?;
    Ok(pool)
}

/// Reads no row but takes a read lock on every table, so a table locked by someone else makes
/// the probe wait (and time out) as the server's own requests would.
const PROBE_SQL: &str = "SELECT 1 FROM accounts WHERE 1 = 0 \
     UNION ALL SELECT 1 FROM server_secrets WHERE 1 = 0 \
     UNION ALL SELECT 1 FROM sessions WHERE 1 = 0 \
     UNION ALL SELECT 1 FROM participants WHERE 1 = 0 \
     UNION ALL SELECT 1 FROM subscriptions WHERE 1 = 0";

impl SqlStore {
    /// The readiness probe, unbounded here ([`Store::ping`] bounds it).
    async fn probe(&self) -> Result<(), StoreError> {
        let mut tx = self.read.begin().await?;
        if self.dialect == Dialect::Postgres {
            // The server gives up when the caller does: an abandoned probe must not keep its
            // connection waiting behind a lock for the full statement timeout.
            let limit = PROBE_TIMEOUT.as_millis();
            (&mut *tx)
                .execute(format!("SET LOCAL statement_timeout = {limit}").as_str())
                .await?;
        }
        sqlx::query(PROBE_SQL).fetch_all(&mut *tx).await?;
        tx.rollback().await?;
        Ok(())
    }
}

/// Does this database error mean "cannot answer now" rather than a fault? See
/// [`StoreError::is_unavailable`].
pub(super) fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => {
            if let Some(pg) = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                is_unavailable_sqlstate(pg.code())
            } else if d.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // The primary result code is the low byte of the extended one.
                d.code()
                    .and_then(|c| c.parse::<u32>().ok())
                    .is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
            } else {
                false
            }
        }
        _ => false,
    }
}

const SQLITE_BUSY: u32 = 5;
const SQLITE_LOCKED: u32 = 6;

/// PostgreSQL SQLSTATE classes of a database that cannot serve now, whatever the request: a
/// retry later may work, so the request is answered "unavailable" (REST 503) and an event is
/// kept rather than dropped. By class, not by code, so that a condition of the same kind that
/// no list named is not taken for a fault:
/// - 08 connection exception; 53 insufficient resources (too many connections, disk full,
///   out of memory); 57 operator intervention (statement timeout, shutting down, crashed,
///   starting up); 58 system error (I/O);
/// - 55 object not in prerequisite state (lock timeout 55P03; 55000, e.g. a database that
///   does not accept connections); 40 transaction rollback (serialization failure, deadlock);
/// - 28 invalid authorization and 3D invalid catalog name: the role may not log in, its
///   password or the database is being changed or restored by an operator.
///
/// Every other class (a constraint, a syntax error, data out of range) is a fault of the
/// request or of the server, not of the database's availability.
fn is_unavailable_sqlstate(code: &str) -> bool {
    matches!(
        code.get(..2),
        Some("08" | "28" | "3D" | "40" | "53" | "55" | "57" | "58")
    )
}

pub(super) fn parse_id<T: std::str::FromStr>(row: &AnyRow, col: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    let s: String = row.try_get(col)?;
    s.parse::<T>().map_err(|e| corrupt(format!("{col}: {e}")))
}

const PARTICIPANT_COLUMNS: &str =
    "p.id, p.account_id, p.callback_url, p.publish_permissions, p.tag, \
     p.device_api_version, p.session_id, p.subscribed_session_id";

fn participant_from_row(
    row: &AnyRow,
    subscriptions: Vec<ParticipantSubscription>,
) -> Result<Participant, StoreError> {
    let account: String = row.try_get("account_id")?;
    let callback: Option<String> = row.try_get("callback_url")?;
    let perms: String = row.try_get("publish_permissions")?;
    let tag: Option<String> = row.try_get("tag")?;
    let version: String = row.try_get("device_api_version")?;
    let session: Option<String> = row.try_get("session_id")?;
    let subscribed: Option<String> = row.try_get("subscribed_session_id")?;
    let session = session
        .map(|s| SessionId::parse(&s))
        .transpose()
        .map_err(corrupt)?;
    let subscribed = subscribed
        .map(|s| SessionId::parse(&s))
        .transpose()
        .map_err(corrupt)?;
    Ok(Participant {
        id: parse_id(row, "id")?,
        account: AccountId::parse(&account).map_err(corrupt)?,
        callback_url: callback
            .map(|c| CallbackUrl::stored(&c))
            .transpose()
            .map_err(corrupt)?,
        publish_permissions: MediaKinds::from_csv(&perms).map_err(corrupt)?,
        tag: tag.map(|t| Tag::parse(&t)).transpose().map_err(corrupt)?,
        device_api_version: DeviceApiVersion::parse(&version).map_err(corrupt)?,
        subscriptions: Subscriptions {
            session_id: if session.is_some() { subscribed } else { None },
            participants: if session.is_some() {
                subscriptions
            } else {
                Vec::new()
            },
        },
        session,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Maps a foreign-key violation to `answer`, any other error to `Backend`.
fn on_foreign_key(answer: StoreError) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |e| match e {
        sqlx::Error::Database(d) if d.is_foreign_key_violation() => answer,
        other => other.into(),
    }
}

/// The outcome of a write kept only while its participant exists: a participant deleted between
/// the write's check and its insert (a foreign key violation) leaves nothing to keep.
fn unless_participant_gone(
    done: Result<sqlx::any::AnyQueryResult, sqlx::Error>,
) -> Result<(), StoreError> {
    match done {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(d)) if d.is_foreign_key_violation() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let _timer = self.timer(Op::Ping);
        tokio::time::timeout(PROBE_TIMEOUT, self.probe())
            .await
            .map_err(|_| StoreError::TimedOut(PROBE_TIMEOUT))?
    }

    async fn create_account(&self, creds: &AccountCredentials) -> Result<(), StoreError> {
        let _timer = self.timer(Op::CreateAccount);
        sqlx::query("INSERT INTO accounts (id, username, password_sha256, created_at) VALUES ($1, $2, $3, $4)")
            .bind(creds.account.as_str())
            .bind(creds.username.as_str())
            .bind(creds.password_sha256.as_str())
            .bind(now_ms())
            .execute(&self.write)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::AccountExists(creds.account.clone())
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    async fn account_by_username(
        &self,
        username: &str,
    ) -> Result<Option<AccountCredentials>, StoreError> {
        let _timer = self.timer(Op::AccountByUsername);
        let row =
            sqlx::query("SELECT id, username, password_sha256 FROM accounts WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.read)
                .await?;
        row.map(|row| {
            let id: String = row.try_get("id")?;
            Ok(AccountCredentials {
                account: AccountId::parse(&id).map_err(corrupt)?,
                username: row.try_get("username")?,
                password_sha256: row.try_get("password_sha256")?,
            })
        })
        .transpose()
    }

    async fn account_count(&self) -> Result<u64, StoreError> {
        let _timer = self.timer(Op::AccountCount);
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM accounts")
            .fetch_one(&self.read)
            .await?
            .try_get("n")?;
        Ok(n.max(0) as u64)
    }

    async fn secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let _timer = self.timer(Op::Secret);
        sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate.to_vec())
            .execute(&self.write)
            .await?;
        let value: Vec<u8> = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.write)
            .await?
            .try_get("value")?;
        Ok(value)
    }

    async fn create_session(&self, session: &Session) -> Result<(), StoreError> {
        let _timer = self.timer(Op::CreateSession);
        sqlx::query(
            "INSERT INTO sessions (id, account_id, tag, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(session.id.to_string())
        .bind(session.account.as_str())
        .bind(session.tag.as_ref().map(|t| t.as_str().to_owned()))
        .bind(now_ms())
        .execute(&self.write)
        .await
        .map_err(on_foreign_key(StoreError::AccountNotFound))?;
        Ok(())
    }

    async fn session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Option<Session>, StoreError> {
        let _timer = self.timer(Op::Session);
        let row = sqlx::query("SELECT tag FROM sessions WHERE id = $1 AND account_id = $2")
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.map(|row| {
            let tag: Option<String> = row.try_get("tag")?;
            Ok(Session {
                id,
                account: account.clone(),
                tag: tag.map(|t| Tag::parse(&t)).transpose().map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn delete_session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Vec<ParticipantId>, StoreError> {
        let _timer = self.timer(Op::DeleteSession);
        let mut tx = self.write.begin().await?;
        Self::lock_session(&mut tx, account, id).await?;
        let members = sqlx::query("SELECT id FROM participants WHERE session_id = $1 ORDER BY id")
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| parse_id::<ParticipantId>(r, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM subscriptions WHERE subscriber_id IN (SELECT id FROM participants WHERE session_id = $1)")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE participants SET session_id = NULL, subscribed_session_id = NULL WHERE session_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(members)
    }

    async fn create_participant(&self, p: &Participant) -> Result<(), StoreError> {
        let _timer = self.timer(Op::CreateParticipant);
        sqlx::query(
            "INSERT INTO participants (id, account_id, callback_url, publish_permissions, tag, \
             device_api_version, session_id, subscribed_session_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7)",
        )
        .bind(p.id.to_string())
        .bind(p.account.as_str())
        .bind(p.callback_url.as_ref().map(|c| c.as_str().to_owned()))
        .bind(p.publish_permissions.to_csv())
        .bind(p.tag.as_ref().map(|t| t.as_str().to_owned()))
        .bind(p.device_api_version.as_str())
        .bind(now_ms())
        .execute(&self.write)
        .await
        .map_err(on_foreign_key(StoreError::AccountNotFound))?;
        Ok(())
    }

    async fn participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Option<Participant>, StoreError> {
        let _timer = self.timer(Op::Participant);
        let sql = format!("SELECT {PARTICIPANT_COLUMNS} FROM participants p WHERE p.id = $1 AND p.account_id = $2");
        let Some(row) = sqlx::query(&sql)
            .bind(id.to_string())
            .bind(account.as_str())
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let mut lists = self
            .subscription_lists("p.id = $1", &id.to_string())
            .await?;
        participant_from_row(&row, lists.remove(&id).unwrap_or_default()).map(Some)
    }

    async fn delete_participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Option<SessionId>, StoreError> {
        let _timer = self.timer(Op::DeleteParticipant);
        let row = sqlx::query(
            "DELETE FROM participants WHERE id = $1 AND account_id = $2 RETURNING session_id",
        )
        .bind(id.to_string())
        .bind(account.as_str())
        .fetch_optional(&self.write)
        .await?
        .ok_or(StoreError::ParticipantNotFound)?;
        let session: Option<String> = row.try_get("session_id")?;
        session
            .map(|s| SessionId::parse(&s))
            .transpose()
            .map_err(corrupt)
    }

    async fn add_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
        subscriptions: Option<&Subscriptions>,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::AddMember);
        let mut tx = self.write.begin().await?;
        Self::lock_session(&mut tx, account, session).await?;
        let current =
            sqlx::query("SELECT session_id FROM participants WHERE id = $1 AND account_id = $2")
                .bind(participant.to_string())
                .bind(account.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::ParticipantNotFound)?;
        let current: Option<String> = current.try_get("session_id")?;
        let already_member = current.as_deref() == Some(session.to_string().as_str());
        if !already_member {
            let n: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM participants WHERE session_id = $1")
                    .bind(session.to_string())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            if n >= MAX_SESSION_MEMBERS as i64 {
                return Err(StoreError::SessionFull);
            }
            // Conditional on still being in no session: on Postgres a concurrent add of the
            // same participant elsewhere makes this re-check the row after its commit.
            let done = sqlx::query(
                "UPDATE participants SET session_id = $1, subscribed_session_id = NULL \
                 WHERE id = $2 AND account_id = $3 AND session_id IS NULL",
            )
            .bind(session.to_string())
            .bind(participant.to_string())
            .bind(account.as_str())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                let row = sqlx::query("SELECT session_id FROM participants WHERE id = $1")
                    .bind(participant.to_string())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::ParticipantNotFound)?;
                let other: Option<String> = row.try_get("session_id")?;
                let other = other.ok_or_else(|| corrupt("membership changed during add"))?;
                return Err(StoreError::InAnotherSession(
                    SessionId::parse(&other).map_err(corrupt)?,
                ));
            }
            sqlx::query("DELETE FROM subscriptions WHERE subscriber_id = $1")
                .bind(participant.to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(subs) = subscriptions {
            Self::replace_subscriptions(&mut tx, account, participant, subs).await?;
        }
        tx.commit()
            .await
            .map_err(on_foreign_key(StoreError::ParticipantNotFound))?;
        Ok(())
    }

    async fn remove_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::RemoveMember);
        let mut tx = self.write.begin().await?;
        Self::lock_session(&mut tx, account, session).await?;
        let done = sqlx::query(
            "UPDATE participants SET session_id = NULL, subscribed_session_id = NULL \
             WHERE id = $1 AND account_id = $2 AND session_id = $3",
        )
        .bind(participant.to_string())
        .bind(account.as_str())
        .bind(session.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            let exists =
                sqlx::query("SELECT 1 AS one FROM participants WHERE id = $1 AND account_id = $2")
                    .bind(participant.to_string())
                    .bind(account.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            return Err(if exists.is_some() {
                StoreError::NotAMember
            } else {
                StoreError::ParticipantNotFound
            });
        }
        sqlx::query("DELETE FROM subscriptions WHERE subscriber_id = $1")
            .bind(participant.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn members(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<Vec<Participant>, StoreError> {
        let _timer = self.timer(Op::Members);
        if self.session(account, session).await?.is_none() {
            return Err(StoreError::SessionNotFound);
        }
        let sql = format!("SELECT {PARTICIPANT_COLUMNS} FROM participants p WHERE p.session_id = $1 ORDER BY p.id");
        let rows = sqlx::query(&sql)
            .bind(session.to_string())
            .fetch_all(&self.read)
            .await?;
        let mut lists = self
            .subscription_lists("p.session_id = $1", &session.to_string())
            .await?;
        rows.iter()
            .map(|row| {
                let id = parse_id::<ParticipantId>(row, "id")?;
                participant_from_row(row, lists.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn set_subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        changes: &[(ParticipantId, Subscriptions)],
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SetSubscriptions);
        let mut tx = self.write.begin().await?;
        Self::lock_session(&mut tx, account, session).await?;
        for (participant, subs) in changes {
            let member = sqlx::query(
                "SELECT session_id FROM participants WHERE id = $1 AND account_id = $2",
            )
            .bind(participant.to_string())
            .bind(account.as_str())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::ParticipantNotFound)?;
            let in_session: Option<String> = member.try_get("session_id")?;
            if in_session.as_deref() != Some(session.to_string().as_str()) {
                return Err(StoreError::NotAMember);
            }
            Self::replace_subscriptions(&mut tx, account, *participant, subs).await?;
        }
        tx.commit()
            .await
            .map_err(on_foreign_key(StoreError::ParticipantNotFound))?;
        Ok(())
    }

    async fn save_subscribe_layout(
        &self,
        participant: ParticipantId,
        layout: &SubscribeLayout,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SaveSubscribeLayout);
        let revision = i64::try_from(layout.revision).map_err(corrupt)?;
        let done = sqlx::query(
            "INSERT INTO subscribe_layouts (participant_id, unique_id, revision, layout, updated_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM participants WHERE id = $1) \
             ON CONFLICT (participant_id) DO UPDATE SET unique_id = excluded.unique_id, \
             revision = excluded.revision, layout = excluded.layout, updated_at = excluded.updated_at \
             WHERE subscribe_layouts.unique_id <> excluded.unique_id \
             OR subscribe_layouts.revision <= excluded.revision",
        )
        .bind(participant.to_string())
        .bind(layout.unique_id.as_str())
        .bind(revision)
        .bind(layout.to_json())
        .bind(now_ms())
        .execute(&self.write)
        .await;
        unless_participant_gone(done)
    }

    async fn subscribe_layout(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<SubscribeLayout>, StoreError> {
        let _timer = self.timer(Op::SubscribeLayout);
        let row = sqlx::query("SELECT layout FROM subscribe_layouts WHERE participant_id = $1")
            .bind(participant.to_string())
            .fetch_optional(&self.read)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let layout: String = row.try_get("layout")?;
        SubscribeLayout::from_json(&layout)
            .map(Some)
            .map_err(corrupt)
    }

    async fn forget_subscribe_layout(
        &self,
        participant: ParticipantId,
        unique_id: &str,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::ForgetSubscribeLayout);
        let mut tx = self.write.begin().await?;
        for table in ["subscribe_layouts", "publish_credentials"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE participant_id = $1 AND unique_id = $2"
            ))
            .bind(participant.to_string())
            .bind(unique_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn save_publish_credentials(
        &self,
        credentials: &PublishCredentials,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SavePublishCredentials);
        let done = sqlx::query(
            "INSERT INTO publish_credentials (participant_id, unique_id, ufrag, pwd, updated_at) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM participants WHERE id = $1) \
             ON CONFLICT (participant_id) DO UPDATE SET unique_id = excluded.unique_id, \
             ufrag = excluded.ufrag, pwd = excluded.pwd, updated_at = excluded.updated_at",
        )
        .bind(credentials.participant.to_string())
        .bind(credentials.unique_id.as_str())
        .bind(credentials.ufrag.as_str())
        .bind(credentials.pwd.as_str())
        .bind(now_ms())
        .execute(&self.write)
        .await;
        unless_participant_gone(done)
    }

    async fn save_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        record: &str,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SavePhoneCall);
        let done = sqlx::query(
            "INSERT INTO phone_calls (participant_id, call, record, updated_at) \
             SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM participants WHERE id = $1) \
             ON CONFLICT (participant_id) DO UPDATE SET call = excluded.call, \
             record = excluded.record, updated_at = excluded.updated_at",
        )
        .bind(participant.to_string())
        .bind(call)
        .bind(record)
        .bind(now_ms())
        .execute(&self.write)
        .await;
        unless_participant_gone(done)
    }

    async fn phone_calls(&self) -> Result<Vec<StoredPhoneCall>, StoreError> {
        let _timer = self.timer(Op::PhoneCalls);
        sqlx::query(
            "SELECT participant_id, call, record, updated_at FROM phone_calls \
             ORDER BY participant_id",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredPhoneCall {
                participant: parse_id(row, "participant_id")?,
                call: row.try_get("call")?,
                record: row.try_get("record")?,
                updated_at_ms: row.try_get("updated_at")?,
            })
        })
        .collect()
    }

    async fn take_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        updated_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer(Op::TakePhoneCall);
        let done = sqlx::query(
            "UPDATE phone_calls SET updated_at = \
             CASE WHEN $4 > updated_at THEN $4 ELSE updated_at + 1 END \
             WHERE participant_id = $1 AND call = $2 AND updated_at = $3",
        )
        .bind(participant.to_string())
        .bind(call)
        .bind(updated_at_ms)
        .bind(now_ms)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        updated_at_ms: i64,
    ) -> Result<bool, StoreError> {
        let _timer = self.timer(Op::EndPhoneCall);
        let done = sqlx::query(
            "DELETE FROM phone_calls WHERE participant_id = $1 AND call = $2 AND updated_at = $3",
        )
        .bind(participant.to_string())
        .bind(call)
        .bind(updated_at_ms)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn forget_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::ForgetPhoneCall);
        sqlx::query("DELETE FROM phone_calls WHERE participant_id = $1 AND call = $2")
            .bind(participant.to_string())
            .bind(call)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn publish_credentials(&self) -> Result<Vec<PublishCredentials>, StoreError> {
        let _timer = self.timer(Op::PublishCredentials);
        sqlx::query(
            "SELECT participant_id, unique_id, ufrag, pwd FROM publish_credentials \
             ORDER BY participant_id",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            let participant: String = row.try_get("participant_id")?;
            Ok(PublishCredentials {
                participant: ParticipantId::parse(&participant).map_err(corrupt)?,
                unique_id: row.try_get("unique_id")?,
                ufrag: row.try_get("ufrag")?,
                pwd: row.try_get("pwd")?,
            })
        })
        .collect()
    }
}

#[cfg(test)]
mod sqlstate_tests {
    use super::is_unavailable_sqlstate;

    #[test]
    fn unavailability_is_decided_by_class() {
        for code in [
            "08006", "08001", "28000", "28P01", "3D000", "40001", "40P01", "53300", "53100",
            "55000", "55P03", "57014", "57P01", "57P03", "57P04", "58030",
        ] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in [
            "23505", "23503", "42601", "42P01", "22003", "XX000", "", "0",
        ] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
    }
}
