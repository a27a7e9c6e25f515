//! [`OperatorStore`] on [`SqlStore`]: what the operator commands read and change (accounts
//! and their credentials, sessions with member counts, the device-token secrets) and the live
//! state each server process records for them (its heartbeat, connected devices, published
//! streams).
//!
//! Live rows belong to the process (instance) that holds the device; a process that stops
//! cleanly removes its own, and the rows of one that stopped beating are removed by the
//! process that claims it and accounts for its devices. Readers are told how long ago each
//! row's process was seen, so a reader never presents a dead process's devices as live.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::{corrupt, parse_id};
use super::{AccountCredentials, InstanceRecord, SqlStore, StoreError};
use crate::domain::{AccountId, MediaKinds, ParticipantId, SessionId, StreamAlias, StreamId, Tag};

/// A process not seen for this long (milliseconds) is dead to the operator's views.
pub const STALE_AFTER_MS: i64 = 60_000;

/// What a heartbeat found of its own process's row before it wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// No row: the first beat, or another process took this one for dead and removed it.
    Absent,
    /// The row, unclaimed.
    Alive,
    /// The row, claimed by another process that took this one for dead: it is writing the
    /// end events of this process's devices.
    Claimed,
}

/// What a heartbeat found, and the epoch of the registration it leaves: the row's
/// `started_at`, new whenever the row is written anew (a first beat, or a beat after another
/// process took this one for dead and removed its row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beaten {
    /// What it found of its own row before it wrote it.
    pub found: Beat,
    /// The registration's epoch, which this process's writes carry ([`Writer`]).
    pub epoch: i64,
}

/// A process writing what its devices did ([`OperatorStore::record_events`]): the write is
/// refused ([`StoreError::Fenced`]) unless the process's row is still the registration of
/// `epoch` and unclaimed at `now_ms` (database clock). This is the fence of a process taken
/// for dead: paused, cut off, or slow past its lease, it cannot write after the process that
/// claimed it has written its devices' ends.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The process.
    pub instance: &'a str,
    /// The epoch of its registration, as its last beat returned it.
    pub epoch: i64,
    /// Now, in the database's clock.
    pub now_ms: i64,
}

/// An account as the operator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSummary {
    /// The account.
    pub account: AccountId,
    /// Its API username.
    pub username: String,
    /// When it was created (epoch milliseconds).
    pub created_at_ms: i64,
    /// Its sessions.
    pub sessions: u64,
    /// Its participants.
    pub participants: u64,
}

/// A session as the operator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Its account.
    pub account: AccountId,
    /// The session.
    pub session: SessionId,
    /// The backend's label.
    pub tag: Option<Tag>,
    /// When it was created (epoch milliseconds).
    pub created_at_ms: i64,
    /// Its members.
    pub members: u64,
}

/// What kind of device a live device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A device on the WebSocket (a browser, or any client of the device protocol).
    Browser,
    /// A phone call through the SIP bridge.
    Phone,
}

impl DeviceKind {
    fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Browser => "browser",
            DeviceKind::Phone => "phone",
        }
    }
}

/// A device connected to some server process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDevice {
    /// Its participant.
    pub participant: ParticipantId,
    /// Its `uniqueId` (browsers) or call id (phones).
    pub device: String,
    /// Browser or phone.
    pub kind: DeviceKind,
    /// The process holding it.
    pub instance: String,
    /// When it connected (epoch milliseconds).
    pub connected_at_ms: i64,
    /// When its process was last seen (epoch milliseconds).
    pub instance_seen_ms: i64,
}

/// A stream a live device publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    /// The publisher.
    pub participant: ParticipantId,
    /// The stream.
    pub stream: StreamId,
    /// Its alias.
    pub alias: Option<StreamAlias>,
    /// What it carries.
    pub kinds: MediaKinds,
}

/// One change of a process's live state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveChange {
    /// A device connected.
    Connected {
        /// Its participant.
        participant: ParticipantId,
        /// Its id.
        device: String,
    },
    /// A connected device is a phone call.
    IsPhone {
        /// Its participant.
        participant: ParticipantId,
        /// Its id.
        device: String,
    },
    /// A device is gone.
    Disconnected {
        /// Its participant.
        participant: ParticipantId,
        /// Its id.
        device: String,
    },
    /// A stream is published.
    Published(LiveStream),
    /// A stream is no longer published.
    Unpublished {
        /// Its publisher.
        participant: ParticipantId,
        /// The stream.
        stream: StreamId,
    },
}

/// The operator's view of the database. See the module docs.
#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
    /// Every account, by id.
    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError>;
    /// Replaces an account's API username and password hash; `AccountNotFound` if none.
    async fn replace_credentials(&self, creds: &AccountCredentials) -> Result<(), StoreError>;
    /// The sessions of `account` (of every account with `None`), oldest first.
    async fn session_summaries(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<SessionSummary>, StoreError>;
    /// The value of a server secret, if set.
    async fn secret_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets (`Some`) or removes (`None`) server secrets, all or none.
    async fn set_secrets(&self, secrets: &[(&str, Option<Vec<u8>>)]) -> Result<(), StoreError>;
    /// Records that the process `instance`, reached at `address`, is alive at `now_ms`. Says what it
    /// found of the process's row (a claim is left as it is: the claimant finishes). The rows
    /// of dead processes are removed only by the process that accounts for their devices
    /// ([`OperatorStore::forget_instance`] after [`OperatorStore::claim_dead_instances`]).
    async fn heartbeat(
        &self,
        instance: &str,
        address: &InstanceRecord,
        now_ms: i64,
    ) -> Result<Beaten, StoreError>;
    /// Appends `rows` to the webhook outbox and applies `live` (changes of the writer's live
    /// state, stamped `at_ms`), in order, in one transaction, if `writer` is still
    /// registered ([`Writer`]); all or nothing.
    async fn record_events(
        &self,
        writer: &Writer<'_>,
        rows: &[super::NewOutboxEvent],
        live: &[LiveChange],
        at_ms: i64,
    ) -> Result<(), StoreError>;
    /// Removes the process `instance`, its live rows and its sessions' placements (a clean
    /// stop, or after its devices were accounted for).
    async fn forget_instance(&self, instance: &str) -> Result<(), StoreError>;
    /// The live devices of these participants, with their process's last heartbeat.
    async fn live_devices(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveDevice>, StoreError>;
    /// The streams these participants publish.
    async fn live_streams(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveStream>, StoreError>;
    /// The live devices of every process other than `instance`, with each process's last
    /// heartbeat (0 when the process row is gone).
    async fn foreign_live_devices(&self, instance: &str) -> Result<Vec<LiveDevice>, StoreError>;
    /// Every process's last heartbeat (epoch milliseconds), by process.
    async fn instances_seen(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Claims for `claimant`, until `until_ms`, the processes other than itself last seen
    /// before `seen_before_ms` (and, with `seen_since_ms`, at or after it) and not claimed by
    /// another now (`now_ms`): of processes claiming at once, one gets each. The processes
    /// claimed.
    async fn claim_dead_instances(
        &self,
        claimant: &str,
        seen_before_ms: i64,
        seen_since_ms: Option<i64>,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
    /// The live devices the process `instance` still holds.
    async fn instance_devices(&self, instance: &str) -> Result<Vec<LiveDevice>, StoreError>;
    /// Replaces what the process `instance` measured of its devices' media quality (a summary,
    /// JSON text, per participant), stamped `now_ms`: its rows of participants not in `rows`
    /// go. Nothing is written once the process's row is gone (it was taken for dead).
    async fn record_quality(
        &self,
        instance: &str,
        rows: &[(ParticipantId, String)],
        now_ms: i64,
    ) -> Result<(), StoreError>;
    /// The media quality recorded for these participants, with their process's last heartbeat.
    async fn live_quality(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveQuality>, StoreError>;
}

/// What a process measured of a participant's media quality (issue 21).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveQuality {
    /// The participant.
    pub participant: ParticipantId,
    /// The process that measured it.
    pub instance: String,
    /// The summary, JSON text as the process wrote it.
    pub summary: String,
    /// When it was measured (epoch milliseconds, the database's clock).
    pub measured_at_ms: i64,
    /// When its process was last seen (0 when the process row is gone).
    pub instance_seen_ms: i64,
}

/// Live devices with their process's last heartbeat (0 when the process row is gone), as
/// [`live_device`] reads them; a `WHERE` follows.
const LIVE_DEVICES: &str = "SELECT d.participant_id, d.device, d.kind, d.instance_id, \
     d.connected_at, COALESCE(i.seen_at, 0) AS seen_at FROM live_devices d \
     LEFT JOIN server_instances i ON i.id = d.instance_id";

impl SqlStore {
    /// The live devices whose process compares to `instance` by `op` (`=` or `<>`).
    async fn devices_by_instance(
        &self,
        op: &'static str,
        instance: &str,
    ) -> Result<Vec<LiveDevice>, StoreError> {
        sqlx::query(&format!(
            "{LIVE_DEVICES} WHERE d.instance_id {op} $1 ORDER BY d.connected_at, d.device"
        ))
        .bind(instance)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(live_device)
        .collect()
    }
}

fn live_device(row: &sqlx::any::AnyRow) -> Result<LiveDevice, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(LiveDevice {
        participant: parse_id(row, "participant_id")?,
        device: row.try_get("device")?,
        kind: match kind.as_str() {
            "phone" => DeviceKind::Phone,
            _ => DeviceKind::Browser,
        },
        instance: row.try_get("instance_id")?,
        connected_at_ms: row.try_get("connected_at")?,
        instance_seen_ms: row.try_get("seen_at")?,
    })
}

fn count(row: &sqlx::any::AnyRow, col: &str) -> Result<u64, StoreError> {
    let n: i64 = row.try_get(col)?;
    u64::try_from(n).map_err(corrupt)
}

/// `participant_id IN ($1, …)` for `n` ids (at least one placeholder).
fn in_list(n: usize) -> String {
    (1..=n.max(1))
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[async_trait]
impl OperatorStore for SqlStore {
    async fn accounts(&self) -> Result<Vec<AccountSummary>, StoreError> {
        sqlx::query(
            "SELECT a.id, a.username, a.created_at, \
             (SELECT COUNT(*) FROM sessions s WHERE s.account_id = a.id) AS sessions, \
             (SELECT COUNT(*) FROM participants p WHERE p.account_id = a.id) AS participants \
             FROM accounts a ORDER BY a.id",
        )
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|row| {
            let account: String = row.try_get("id")?;
            Ok(AccountSummary {
                account: AccountId::parse(&account).map_err(corrupt)?,
                username: row.try_get("username")?,
                created_at_ms: row.try_get("created_at")?,
                sessions: count(row, "sessions")?,
                participants: count(row, "participants")?,
            })
        })
        .collect()
    }

    async fn replace_credentials(&self, creds: &AccountCredentials) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE accounts SET username = $1, password_sha256 = $2 WHERE id = $3")
                .bind(&creds.username)
                .bind(&creds.password_sha256)
                .bind(creds.account.as_str())
                .execute(&self.write)
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    async fn session_summaries(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let sql = "SELECT s.id, s.account_id, s.tag, s.created_at, \
                   (SELECT COUNT(*) FROM participants p WHERE p.session_id = s.id) AS members \
                   FROM sessions s WHERE ($1 = '' OR s.account_id = $1) ORDER BY s.created_at, s.id";
        sqlx::query(sql)
            .bind(account.map_or("", AccountId::as_str))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| {
                let account: String = row.try_get("account_id")?;
                let tag: Option<String> = row.try_get("tag")?;
                Ok(SessionSummary {
                    account: AccountId::parse(&account).map_err(corrupt)?,
                    session: parse_id(row, "id")?,
                    tag: tag.map(|t| Tag::parse(&t)).transpose().map_err(corrupt)?,
                    created_at_ms: row.try_get("created_at")?,
                    members: count(row, "members")?,
                })
            })
            .collect()
    }

    async fn secret_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    async fn set_secrets(&self, secrets: &[(&str, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for (name, value) in secrets {
            match value {
                Some(v) => {
                    sqlx::query(
                        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                    )
                    .bind(*name)
                    .bind(v.clone())
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM server_secrets WHERE name = $1")
                        .bind(*name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        instance: &str,
        address: &InstanceRecord,
        now_ms: i64,
    ) -> Result<Beaten, StoreError> {
        let mut tx = self.write.begin().await?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT reaped_until FROM server_instances WHERE id = $1")
                .bind(instance)
                .fetch_optional(&mut *tx)
                .await?;
        // A claim that ended unfinished (its claimant died too) does not count: the next
        // claimant starts over.
        let beat = match found {
            None => Beat::Absent,
            Some(until) if until > now_ms => Beat::Claimed,
            Some(_) => Beat::Alive,
        };
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO server_instances (id, address, started_at, seen_at, cluster_address, sip_address, draining) \
             VALUES ($1, $2, $3, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, \
             address = excluded.address, cluster_address = excluded.cluster_address, \
             sip_address = excluded.sip_address, draining = excluded.draining \
             RETURNING started_at",
        )
        .bind(instance)
        .bind(&address.http)
        .bind(now_ms)
        .bind(address.cluster.clone())
        .bind(address.sip.clone())
        .bind(i64::from(address.draining))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Beaten { found: beat, epoch })
    }

    async fn record_events(
        &self,
        writer: &Writer<'_>,
        rows: &[super::NewOutboxEvent],
        live: &[LiveChange],
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(super::sql::Op::RecordEvents);
        let mut tx = self.write.begin().await?;
        // On PostgreSQL the row is locked against a concurrent claim until the commit: the
        // claim waits, then finds what this transaction wrote (and accounts for it).
        let lock = if self.dialect() == super::Dialect::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        let claimed_until: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT reaped_until FROM server_instances WHERE id = $1 AND started_at = $2{lock}"
        ))
        .bind(writer.instance)
        .bind(writer.epoch)
        .fetch_optional(&mut *tx)
        .await?;
        if claimed_until.is_none_or(|until| until > writer.now_ms) {
            return Err(StoreError::Fenced);
        }
        super::webhooks::insert_outbox(&mut tx, rows).await?;
        for change in live {
            apply_live(&mut tx, writer.instance, change, at_ms).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_dead_instances(
        &self,
        claimant: &str,
        seen_before_ms: i64,
        seen_since_ms: Option<i64>,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        // One statement: a row's claim is checked and taken at once.
        let rows = sqlx::query(
            "UPDATE server_instances SET reaped_by = $1, reaped_until = $4 \
             WHERE id <> $1 AND seen_at < $2 AND seen_at >= $5 AND reaped_until <= $3 \
             RETURNING id",
        )
        .bind(claimant)
        .bind(seen_before_ms)
        .bind(now_ms)
        .bind(until_ms)
        .bind(seen_since_ms.unwrap_or(i64::MIN))
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }

    async fn instance_devices(&self, instance: &str) -> Result<Vec<LiveDevice>, StoreError> {
        self.devices_by_instance("=", instance).await
    }

    async fn forget_instance(&self, instance: &str) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        for sql in [
            "DELETE FROM live_devices WHERE instance_id = $1",
            "DELETE FROM live_streams WHERE instance_id = $1",
            "DELETE FROM live_quality WHERE instance_id = $1",
            "DELETE FROM session_hosts WHERE instance_id = $1",
            "DELETE FROM cluster_duties WHERE holder = $1",
            "DELETE FROM server_instances WHERE id = $1",
        ] {
            sqlx::query(sql).bind(instance).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn live_devices(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveDevice>, StoreError> {
        if participants.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{LIVE_DEVICES} WHERE d.participant_id IN ({}) ORDER BY d.connected_at, d.device",
            in_list(participants.len())
        );
        let mut query = sqlx::query(&sql);
        for p in participants {
            query = query.bind(p.to_string());
        }
        query
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(live_device)
            .collect()
    }

    async fn foreign_live_devices(&self, instance: &str) -> Result<Vec<LiveDevice>, StoreError> {
        self.devices_by_instance("<>", instance).await
    }

    async fn instances_seen(&self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query("SELECT id, seen_at FROM server_instances ORDER BY id")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("seen_at")?)))
            .collect()
    }

    async fn live_streams(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveStream>, StoreError> {
        if participants.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT participant_id, stream_id, alias, audio, video FROM live_streams \
             WHERE participant_id IN ({}) ORDER BY participant_id, stream_id",
            in_list(participants.len())
        );
        let mut query = sqlx::query(&sql);
        for p in participants {
            query = query.bind(p.to_string());
        }
        query
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| {
                let stream: String = row.try_get("stream_id")?;
                let alias: Option<String> = row.try_get("alias")?;
                let audio: i64 = row.try_get("audio")?;
                let video: i64 = row.try_get("video")?;
                Ok(LiveStream {
                    participant: parse_id(row, "participant_id")?,
                    stream: StreamId::parse(&stream).map_err(corrupt)?,
                    alias: alias
                        .map(|a| StreamAlias::parse(&a))
                        .transpose()
                        .map_err(corrupt)?,
                    kinds: MediaKinds {
                        audio: audio != 0,
                        video: video != 0,
                    },
                })
            })
            .collect()
    }

    async fn record_quality(
        &self,
        instance: &str,
        rows: &[(ParticipantId, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM live_quality WHERE instance_id = $1")
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        for (participant, summary) in rows {
            sqlx::query(
                "INSERT INTO live_quality (participant_id, instance_id, summary, measured_at) \
                 SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM server_instances WHERE id = $5) \
                 ON CONFLICT (participant_id) DO UPDATE SET instance_id = excluded.instance_id, \
                 summary = excluded.summary, measured_at = excluded.measured_at",
            )
            .bind(participant.to_string())
            .bind(instance)
            .bind(summary.as_str())
            .bind(now_ms)
            .bind(instance)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn live_quality(
        &self,
        participants: &[ParticipantId],
    ) -> Result<Vec<LiveQuality>, StoreError> {
        if participants.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT q.participant_id, q.instance_id, q.summary, q.measured_at, \
             COALESCE(i.seen_at, 0) AS seen_at FROM live_quality q \
             LEFT JOIN server_instances i ON i.id = q.instance_id \
             WHERE q.participant_id IN ({}) ORDER BY q.participant_id",
            in_list(participants.len())
        );
        let mut query = sqlx::query(&sql);
        for p in participants {
            query = query.bind(p.to_string());
        }
        query
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| {
                Ok(LiveQuality {
                    participant: parse_id(row, "participant_id")?,
                    instance: row.try_get("instance_id")?,
                    summary: row.try_get("summary")?,
                    measured_at_ms: row.try_get("measured_at")?,
                    instance_seen_ms: row.try_get("seen_at")?,
                })
            })
            .collect()
    }
}

/// Applies one change of `instance`'s live state, stamped `at_ms`, in `tx`.
async fn apply_live(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    instance: &str,
    change: &LiveChange,
    at_ms: i64,
) -> Result<(), StoreError> {
    match change {
        LiveChange::Connected {
            participant,
            device,
        } => {
            sqlx::query(
                    "INSERT INTO live_devices (instance_id, participant_id, device, kind, connected_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (participant_id, device) DO UPDATE \
                     SET instance_id = excluded.instance_id, connected_at = excluded.connected_at",
                )
                .bind(instance)
                .bind(participant.to_string())
                .bind(device)
                .bind(DeviceKind::Browser.as_str())
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
        }
        LiveChange::IsPhone {
            participant,
            device,
        } => {
            sqlx::query(
                "UPDATE live_devices SET kind = $1 WHERE participant_id = $2 AND device = $3",
            )
            .bind(DeviceKind::Phone.as_str())
            .bind(participant.to_string())
            .bind(device)
            .execute(&mut **tx)
            .await?;
        }
        LiveChange::Disconnected {
            participant,
            device,
        } => {
            sqlx::query(
                    "DELETE FROM live_devices WHERE participant_id = $1 AND device = $2 AND instance_id = $3",
                )
                .bind(participant.to_string())
                .bind(device)
                .bind(instance)
                .execute(&mut **tx)
                .await?;
        }
        LiveChange::Published(s) => {
            sqlx::query(
                    "INSERT INTO live_streams (instance_id, participant_id, stream_id, alias, audio, video, published_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (participant_id, stream_id) DO UPDATE \
                     SET instance_id = excluded.instance_id, alias = excluded.alias, audio = excluded.audio, \
                     video = excluded.video, published_at = excluded.published_at",
                )
                .bind(instance)
                .bind(s.participant.to_string())
                .bind(s.stream.as_str())
                .bind(s.alias.as_ref().map(|a| a.as_str().to_owned()))
                .bind(i64::from(s.kinds.audio))
                .bind(i64::from(s.kinds.video))
                .bind(at_ms)
                .execute(&mut **tx)
                .await?;
        }
        LiveChange::Unpublished {
            participant,
            stream,
        } => {
            sqlx::query(
                    "DELETE FROM live_streams WHERE participant_id = $1 AND stream_id = $2 AND instance_id = $3",
                )
                .bind(participant.to_string())
                .bind(stream.as_str())
                .bind(instance)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}
