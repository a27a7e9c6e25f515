//! [`PlacementStore`] on [`SqlStore`]: which serving process hosts each session's media
//! (issue 20), and where the processes reach one another.
//!
//! A session is placed on one process when its first device or phone arrives; the placement
//! stands while its process is alive (beating, not claimed by a process that took it for dead)
//! and is released by that process once none of the session's members has had a device there
//! for a while. Each device or call the host admits stamps the placement (`placed_at`), and a
//! release needs the stamp to be old, so a placement is never released under a device that
//! has just arrived. A process that
//! finds the session placed on a dead process, or on none, takes it over in one conditional
//! statement, so processes placing at once agree on one host. `epoch` counts a session's
//! placements.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::parse_id;
use super::{SqlStore, StoreError};
use crate::domain::SessionId;

/// What a process records of itself with each heartbeat: where the others reach it, and
/// whether it drains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Its HTTP listener's bound address, for the operator.
    pub http: String,
    /// The URL base of its device WebSocket for the other processes (`ws://10.0.0.5:8080`);
    /// `None`: they cannot reach it.
    pub cluster: Option<String>,
    /// Its SIP listener (`host:port`), where calls for the sessions it hosts are redirected.
    pub sip: Option<String>,
    /// It drains before it stops: it keeps the sessions it hosts but takes no new one.
    pub draining: bool,
}

/// The process hosting a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHost {
    /// The session.
    pub session: SessionId,
    /// Its host process.
    pub instance: String,
    /// How many times the session was placed (1 for the first placement).
    pub epoch: i64,
    /// Where the host's device WebSocket is reached, if it can be.
    pub cluster_address: Option<String>,
    /// The host's SIP listener, if known.
    pub sip_address: Option<String>,
    /// The host's last heartbeat (epoch milliseconds, the database's clock); `None` when its
    /// row is gone.
    pub host_seen_ms: Option<i64>,
}

/// A live process and how much it serves, for choosing a new session's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLoad {
    /// The process.
    pub instance: String,
    /// Where its device WebSocket is reached, if it can be.
    pub cluster_address: Option<String>,
    /// Its live devices (browsers and phones).
    pub devices: u64,
    /// It drains before it stops (no new session goes there).
    pub draining: bool,
}

/// A serving process as `patchbay cluster status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The process.
    pub instance: String,
    /// What it records of itself (its addresses, whether it drains).
    pub record: InstanceRecord,
    /// When it started (epoch milliseconds).
    pub started_at_ms: i64,
    /// Its last heartbeat (epoch milliseconds).
    pub seen_at_ms: i64,
    /// Until when another process's claim on it (taken for dead) lasts; 0: none ever.
    pub claimed_until_ms: i64,
    /// Its live devices (browsers and phones).
    pub devices: u64,
    /// The sessions it hosts.
    pub sessions: u64,
}

/// The condition "the process `i` is alive": seen since the parameter `$since` (epoch ms)
/// and not claimed by another process at the parameter `$now`.
fn alive(since: u8, now: u8) -> String {
    format!("i.seen_at >= ${since} AND i.reaped_until <= ${now}")
}

/// Sessions' hosts. See the module docs.
#[async_trait]
pub trait PlacementStore: Send + Sync + 'static {
    /// The host of `session`: the process that hosts it if that one is alive (seen since
    /// `alive_since_ms`, not claimed at `now_ms`) and is not `replacing`, else `candidate`,
    /// placed now (the epoch grows). Of processes placing one session at once, all get the
    /// same host. `replacing`: a process known to be gone however recent its last beat (this
    /// process's predecessor on the same address).
    async fn place_session(
        &self,
        session: SessionId,
        candidate: &str,
        replacing: Option<&str>,
        alive_since_ms: i64,
        now_ms: i64,
    ) -> Result<SessionHost, StoreError>;
    /// `instance` still hosts `session` and has just used the placement (a device or call
    /// arrived): the placement is stamped `now_ms`, which keeps it from being released for a
    /// while. False if `instance` no longer hosts it.
    async fn confirm_session(
        &self,
        session: SessionId,
        instance: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The recorded host of `session`, alive or not; `None` if it has none.
    async fn session_host(&self, session: SessionId) -> Result<Option<SessionHost>, StoreError>;
    /// Releases `session` if `instance` hosts it and has not confirmed it since
    /// `used_before_ms` (true if released).
    async fn release_session(
        &self,
        session: SessionId,
        instance: &str,
        used_before_ms: i64,
    ) -> Result<bool, StoreError>;
    /// The live processes (as in [`PlacementStore::place_session`]) with their device counts,
    /// by process id.
    async fn instance_loads(
        &self,
        alive_since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<InstanceLoad>, StoreError>;
    /// The database's clock now (epoch milliseconds): the one clock leases are compared in.
    async fn clock_ms(&self) -> Result<i64, StoreError>;
    /// Every serving process recorded, oldest first, with its devices and hosted sessions.
    async fn instances(&self) -> Result<Vec<InstanceStatus>, StoreError>;
    /// The sessions `instance` hosts, placed before `placed_before_ms`, where no member has a
    /// live device on `instance`: the sessions it may release. By id.
    async fn idle_sessions(
        &self,
        instance: &str,
        placed_before_ms: i64,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Takes or renews, for `holder` until `until_ms`, the duty `name` (a job one process at
    /// a time does for all): granted when nobody holds it, its lease ended before `now_ms`,
    /// or `holder` holds it already. Of processes asking at once, one gets it. A process's
    /// duties go with its row ([`super::OperatorStore::forget_instance`]).
    async fn take_duty(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;
}

const HOST: &str =
    "SELECT h.session_id, h.instance_id, h.epoch, i.cluster_address, i.sip_address, \
     i.seen_at \
     FROM session_hosts h LEFT JOIN server_instances i ON i.id = h.instance_id \
     WHERE h.session_id = $1";

fn host(row: &sqlx::any::AnyRow) -> Result<SessionHost, StoreError> {
    Ok(SessionHost {
        session: parse_id(row, "session_id")?,
        instance: row.try_get("instance_id")?,
        epoch: row.try_get("epoch")?,
        cluster_address: row.try_get("cluster_address")?,
        sip_address: row.try_get("sip_address")?,
        host_seen_ms: row.try_get("seen_at")?,
    })
}

impl SqlStore {
    /// Runs `sql`, a change of `session`'s placement row held by `instance`, with the time
    /// `ms` ($1, $2, $3): whether it changed the row.
    async fn host_row(
        &self,
        sql: &str,
        session: SessionId,
        instance: &str,
        ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql)
            .bind(session.to_string())
            .bind(instance)
            .bind(ms)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl PlacementStore for SqlStore {
    async fn place_session(
        &self,
        session: SessionId,
        candidate: &str,
        replacing: Option<&str>,
        alive_since_ms: i64,
        now_ms: i64,
    ) -> Result<SessionHost, StoreError> {
        let mut tx = self.write.begin().await?;
        // One statement: the host's liveness is checked and the placement taken at once (on
        // PostgreSQL, a conflicting insert waits for the other and re-checks the condition on
        // the row it committed).
        sqlx::query(&format!(
            "INSERT INTO session_hosts (session_id, instance_id, epoch, placed_at) \
             VALUES ($1, $2, 1, $4) ON CONFLICT (session_id) DO UPDATE \
             SET instance_id = excluded.instance_id, epoch = session_hosts.epoch + 1, \
                 placed_at = excluded.placed_at \
             WHERE session_hosts.instance_id <> excluded.instance_id AND \
             (session_hosts.instance_id = $5 OR NOT EXISTS \
             (SELECT 1 FROM server_instances i WHERE i.id = session_hosts.instance_id AND {}))",
            alive(3, 4)
        ))
        .bind(session.to_string())
        .bind(candidate)
        .bind(alive_since_ms)
        .bind(now_ms)
        .bind(replacing.unwrap_or(""))
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(HOST)
            .bind(session.to_string())
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        host(&row)
    }

    async fn session_host(&self, session: SessionId) -> Result<Option<SessionHost>, StoreError> {
        sqlx::query(HOST)
            .bind(session.to_string())
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(host)
            .transpose()
    }

    async fn confirm_session(
        &self,
        session: SessionId,
        instance: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.host_row(
            "UPDATE session_hosts SET placed_at = $3 WHERE session_id = $1 AND instance_id = $2",
            session,
            instance,
            now_ms,
        )
        .await
    }

    async fn release_session(
        &self,
        session: SessionId,
        instance: &str,
        used_before_ms: i64,
    ) -> Result<bool, StoreError> {
        self.host_row(
            "DELETE FROM session_hosts \
             WHERE session_id = $1 AND instance_id = $2 AND placed_at < $3",
            session,
            instance,
            used_before_ms,
        )
        .await
    }

    async fn instance_loads(
        &self,
        alive_since_ms: i64,
        now_ms: i64,
    ) -> Result<Vec<InstanceLoad>, StoreError> {
        sqlx::query(&format!(
            "SELECT i.id, i.cluster_address, i.draining, \
             (SELECT COUNT(*) FROM live_devices d WHERE d.instance_id = i.id) AS devices \
             FROM server_instances i WHERE {} ORDER BY i.id",
            alive(1, 2)
        ))
        .bind(alive_since_ms)
        .bind(now_ms)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            let devices: i64 = row.try_get("devices")?;
            let draining: i64 = row.try_get("draining")?;
            Ok(InstanceLoad {
                instance: row.try_get("id")?,
                cluster_address: row.try_get("cluster_address")?,
                devices: u64::try_from(devices).unwrap_or(0),
                draining: draining != 0,
            })
        })
        .collect()
    }

    async fn clock_ms(&self) -> Result<i64, StoreError> {
        let sql = match self.dialect() {
            super::Dialect::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms"
            }
            super::Dialect::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now_ms"
            }
        };
        let row = sqlx::query(sql).fetch_one(&self.read).await?;
        Ok(row.try_get("now_ms")?)
    }

    async fn instances(&self) -> Result<Vec<InstanceStatus>, StoreError> {
        sqlx::query(
            "SELECT i.id, i.address, i.cluster_address, i.sip_address, i.draining, i.started_at, \
             i.seen_at, i.reaped_until, \
             (SELECT COUNT(*) FROM live_devices d WHERE d.instance_id = i.id) AS devices, \
             (SELECT COUNT(*) FROM session_hosts h WHERE h.instance_id = i.id) AS sessions \
             FROM server_instances i ORDER BY i.started_at, i.id",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            let draining: i64 = row.try_get("draining")?;
            let devices: i64 = row.try_get("devices")?;
            let sessions: i64 = row.try_get("sessions")?;
            Ok(InstanceStatus {
                instance: row.try_get("id")?,
                record: InstanceRecord {
                    http: row.try_get("address")?,
                    cluster: row.try_get("cluster_address")?,
                    sip: row.try_get("sip_address")?,
                    draining: draining != 0,
                },
                started_at_ms: row.try_get("started_at")?,
                seen_at_ms: row.try_get("seen_at")?,
                claimed_until_ms: row.try_get("reaped_until")?,
                devices: u64::try_from(devices).unwrap_or(0),
                sessions: u64::try_from(sessions).unwrap_or(0),
            })
        })
        .collect()
    }

    async fn idle_sessions(
        &self,
        instance: &str,
        placed_before_ms: i64,
    ) -> Result<Vec<SessionId>, StoreError> {
        sqlx::query(
            "SELECT h.session_id FROM session_hosts h \
             WHERE h.instance_id = $1 AND h.placed_at < $2 AND NOT EXISTS \
             (SELECT 1 FROM participants p JOIN live_devices d ON d.participant_id = p.id \
              WHERE p.session_id = h.session_id AND d.instance_id = $1) \
             ORDER BY h.session_id",
        )
        .bind(instance)
        .bind(placed_before_ms)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| parse_id(row, "session_id"))
        .collect()
    }

    async fn take_duty(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        // One statement: the lease is checked and taken at once.
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO cluster_duties (name, holder, until) VALUES ($1, $2, $4) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE cluster_duties.until < $3 OR cluster_duties.holder = excluded.holder \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(now_ms)
        .bind(until_ms)
        .fetch_optional(&self.write)
        .await?;
        Ok(taken.is_some())
    }
}
