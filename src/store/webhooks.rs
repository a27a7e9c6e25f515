//! [`WebhookStore`] on [`SqlStore`]: account webhook settings, the outbox and the delivery log.
//!
//! The outbox is one table in emission order (`seq`); an event is "pending" until an attempt
//! is acknowledged ("delivered") or its retries run out ("failed"). Only the head of each
//! participant's pending queue is ever due, so a participant's events are delivered in order
//! while other participants' queues move on.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::sql::{corrupt, now_ms, parse_id, Op};
use super::{
    AccountWebhooks, AttemptOutcome, DeliveryAttempt, NewOutboxEvent, OutboxEvent, SqlStore,
    StoreError, WebhookOptIn, WebhookStore, WebhookTarget,
};
use crate::domain::{AccountId, CallbackUrl, ParticipantId, SessionId, Tag};

fn outbox_event_from_row(row: &AnyRow) -> Result<OutboxEvent, StoreError> {
    let account: String = row.try_get("account_id")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        event: NewOutboxEvent {
            id: row.try_get("id")?,
            account: AccountId::parse(&account).map_err(corrupt)?,
            participant: parse_id(row, "participant_id")?,
            url: row.try_get("url")?,
            event: row.try_get("event")?,
            body: row.try_get("body")?,
            created_at_ms: row.try_get("created_at")?,
        },
        attempts: u32::try_from(attempts).map_err(corrupt)?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<DeliveryAttempt, StoreError> {
    let attempt: i64 = row.try_get("attempt")?;
    let status: Option<i64> = row.try_get("status")?;
    Ok(DeliveryAttempt {
        event_id: row.try_get("event_id")?,
        event: row.try_get("event")?,
        attempt: u32::try_from(attempt).map_err(corrupt)?,
        status: status.map(u16::try_from).transpose().map_err(corrupt)?,
        error: row.try_get("error")?,
        at_ms: row.try_get("at")?,
    })
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn webhook_target(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<WebhookTarget>, StoreError> {
        let _timer = self.timer(Op::WebhookTarget);
        let row =
            sqlx::query("SELECT account_id, callback_url, tag FROM participants WHERE id = $1")
                .bind(participant.to_string())
                .fetch_optional(&self.read)
                .await?;
        row.map(|row| {
            let account: String = row.try_get("account_id")?;
            let callback: Option<String> = row.try_get("callback_url")?;
            let tag: Option<String> = row.try_get("tag")?;
            Ok(WebhookTarget {
                account: AccountId::parse(&account).map_err(corrupt)?,
                callback_url: callback
                    .map(|c| CallbackUrl::stored(&c))
                    .transpose()
                    .map_err(corrupt)?,
                tag: tag.map(|t| Tag::parse(&t)).transpose().map_err(corrupt)?,
            })
        })
        .transpose()
    }

    async fn account_webhooks(
        &self,
        account: &AccountId,
        candidate: &str,
    ) -> Result<AccountWebhooks, StoreError> {
        let _timer = self.timer(Op::AccountWebhooks);
        sqlx::query(
            "UPDATE accounts SET webhook_secret = $1 WHERE id = $2 AND webhook_secret IS NULL",
        )
        .bind(candidate)
        .bind(account.as_str())
        .execute(&self.write)
        .await?;
        let row = sqlx::query(
            "SELECT webhook_secret, webhook_bandwidth_only, webhook_active_speaker, \
             webhook_quality FROM accounts WHERE id = $1",
        )
        .bind(account.as_str())
        .fetch_optional(&self.write)
        .await?
        .ok_or(StoreError::AccountNotFound)?;
        let secret: Option<String> = row.try_get("webhook_secret")?;
        let only: i64 = row.try_get("webhook_bandwidth_only")?;
        let speaker: i64 = row.try_get("webhook_active_speaker")?;
        let quality: i64 = row.try_get("webhook_quality")?;
        Ok(AccountWebhooks {
            secret: secret.ok_or_else(|| corrupt("account without a webhook secret"))?,
            bandwidth_only: only != 0,
            active_speaker_events: speaker != 0,
            quality_events: quality != 0,
        })
    }

    async fn rotate_webhook_secret(
        &self,
        account: &AccountId,
        secret: &str,
        previous_until_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::RotateWebhookSecret);
        let done = sqlx::query(
            "UPDATE accounts SET webhook_secret_previous = CASE WHEN $3 > 0 THEN webhook_secret END, \
             webhook_secret_previous_until = $3, webhook_secret = $1 WHERE id = $2",
        )
        .bind(secret)
        .bind(account.as_str())
        .bind(previous_until_ms.unwrap_or(0))
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    async fn set_webhook_bandwidth_only(
        &self,
        account: &AccountId,
        bandwidth_only: bool,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SetWebhookBandwidthOnly);
        let done = sqlx::query("UPDATE accounts SET webhook_bandwidth_only = $1 WHERE id = $2")
            .bind(i64::from(bandwidth_only))
            .bind(account.as_str())
            .execute(&self.write)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    async fn set_webhook_opt_in(
        &self,
        account: &AccountId,
        event: WebhookOptIn,
        on: bool,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::SetWebhookOptIn);
        let sql = match event {
            WebhookOptIn::ActiveSpeaker => {
                "UPDATE accounts SET webhook_active_speaker = $1 WHERE id = $2"
            }
            WebhookOptIn::QualityChanged => {
                "UPDATE accounts SET webhook_quality = $1 WHERE id = $2"
            }
        };
        let done = sqlx::query(sql)
            .bind(i64::from(on))
            .bind(account.as_str())
            .execute(&self.write)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::AccountNotFound);
        }
        Ok(())
    }

    async fn outbox_append(&self, events: &[NewOutboxEvent]) -> Result<(), StoreError> {
        let _timer = self.timer(Op::OutboxAppend);
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        insert_outbox(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_due(
        &self,
        now_ms: i64,
        limit: u32,
        per_account: u32,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let _timer = self.timer(Op::OutboxDue);
        // Heads ranked within their account; rank first in the order is what makes accounts
        // take turns.
        sqlx::query(
            "SELECT * FROM (SELECT o.seq, o.id, o.account_id, o.participant_id, o.url, o.event, \
             o.body, o.created_at, o.attempts, o.next_at, \
             COALESCE(a.webhook_secret, '') AS secret, \
             CASE WHEN a.webhook_secret_previous_until > $1 THEN a.webhook_secret_previous \
             END AS previous_secret, \
             ROW_NUMBER() OVER (PARTITION BY o.account_id ORDER BY o.next_at, o.seq) AS turn \
             FROM webhook_outbox o JOIN accounts a ON a.id = o.account_id \
             WHERE o.state = 'pending' AND o.next_at <= $1 AND o.claimed_until <= $1 AND o.seq = \
             (SELECT MIN(h.seq) FROM webhook_outbox h \
              WHERE h.state = 'pending' AND h.participant_id = o.participant_id)) due \
             WHERE due.turn <= $3 ORDER BY due.turn, due.next_at, due.seq LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .bind(i64::from(per_account.max(1)))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(outbox_event_from_row)
        .collect()
    }

    async fn outbox_claim(
        &self,
        seqs: &[i64],
        claimant: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let _timer = self.timer(Op::OutboxClaim);
        // One statement: a row's claim is checked and taken at once (PostgreSQL re-checks the
        // condition on a row another transaction just claimed; SQLite has one writer).
        let list: Vec<String> = (0..seqs.len()).map(|i| format!("${}", i + 4)).collect();
        let sql = format!(
            "UPDATE webhook_outbox SET claimed_until = $1, claimed_by = $2 \
             WHERE state = 'pending' AND next_at <= $3 AND claimed_until <= $3 \
             AND seq IN ({}) RETURNING seq",
            list.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(until_ms).bind(claimant).bind(now_ms);
        for seq in seqs {
            query = query.bind(*seq);
        }
        let rows = query.fetch_all(&self.write).await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("seq").map_err(StoreError::from))
            .collect()
    }

    async fn outbox_pending(&self) -> Result<u64, StoreError> {
        let _timer = self.timer(Op::OutboxPending);
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM webhook_outbox WHERE state = 'pending'")
                .fetch_one(&self.read)
                .await?
                .try_get("n")?;
        Ok(n.max(0) as u64)
    }

    async fn outbox_attempted(
        &self,
        event: &OutboxEvent,
        attempt: &DeliveryAttempt,
        outcome: AttemptOutcome,
        claimant: &str,
    ) -> Result<(), StoreError> {
        let _timer = self.timer(Op::OutboxAttempted);
        let (state, next_at) = match outcome {
            AttemptOutcome::Delivered => ("delivered", attempt.at_ms),
            AttemptOutcome::RetryAt(at) => ("pending", at),
            AttemptOutcome::GaveUp => ("failed", attempt.at_ms),
        };
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "UPDATE webhook_outbox SET state = $1, next_at = $2, attempts = $3, \
             claimed_until = 0, claimed_by = NULL \
             WHERE id = $4 AND (claimed_by IS NULL OR claimed_by = $5)",
        )
        .bind(state)
        .bind(next_at)
        .bind(i64::from(attempt.attempt))
        .bind(event.event.id.as_str())
        .bind(claimant)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (event_id, account_id, participant_id, event, attempt, \
             status, error, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.event.id.as_str())
        .bind(event.event.account.as_str())
        .bind(event.event.participant.to_string())
        .bind(event.event.event.as_str())
        .bind(i64::from(attempt.attempt))
        .bind(attempt.status.map(i64::from))
        .bind(attempt.error.clone())
        .bind(attempt.at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn prune_webhooks(&self, before_ms: i64, limit: u32) -> Result<u64, StoreError> {
        let _timer = self.timer(Op::PruneWebhooks);
        let limit = i64::from(limit);
        let events = sqlx::query(
            "DELETE FROM webhook_outbox WHERE seq IN (SELECT seq FROM webhook_outbox \
             WHERE state IN ('delivered', 'failed') AND next_at < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit)
        .execute(&self.write)
        .await?
        .rows_affected();
        let attempts = sqlx::query(
            "DELETE FROM webhook_attempts WHERE seq IN (SELECT seq FROM webhook_attempts \
             WHERE at < $1 LIMIT $2)",
        )
        .bind(before_ms)
        .bind(limit)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(events + attempts)
    }

    async fn delivery_log(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        limit: u32,
    ) -> Result<Vec<DeliveryAttempt>, StoreError> {
        let _timer = self.timer(Op::DeliveryLog);
        sqlx::query(
            "SELECT event_id, event, attempt, status, error, at FROM webhook_attempts \
             WHERE account_id = $1 AND participant_id = $2 ORDER BY seq DESC LIMIT $3",
        )
        .bind(account.as_str())
        .bind(participant.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(attempt_from_row)
        .collect()
    }

    async fn sessions_created_before(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<(AccountId, SessionId)>, StoreError> {
        let _timer = self.timer(Op::SessionsCreatedBefore);
        self.created_before(
            "SELECT id, account_id FROM sessions WHERE created_at < $1 \
             ORDER BY created_at LIMIT $2",
            cutoff_ms,
            limit,
        )
        .await
    }

    async fn participants_created_before(
        &self,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<(AccountId, ParticipantId)>, StoreError> {
        let _timer = self.timer(Op::ParticipantsCreatedBefore);
        self.created_before(
            "SELECT id, account_id FROM participants WHERE created_at < $1 \
             ORDER BY created_at LIMIT $2",
            cutoff_ms,
            limit,
        )
        .await
    }
}

impl SqlStore {
    /// The `(account_id, id)` rows `query` selects with the cutoff and limit bound.
    async fn created_before<I>(
        &self,
        query: &'static str,
        cutoff_ms: i64,
        limit: u32,
    ) -> Result<Vec<(AccountId, I)>, StoreError>
    where
        I: std::str::FromStr,
        I::Err: std::fmt::Display,
    {
        sqlx::query(query)
            .bind(cutoff_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| {
                let account: String = row.try_get("account_id")?;
                Ok((
                    AccountId::parse(&account).map_err(corrupt)?,
                    parse_id(row, "id")?,
                ))
            })
            .collect()
    }
}

/// The store's clock, for callers that stamp outbox rows the same way (epoch milliseconds).
pub fn epoch_ms() -> i64 {
    now_ms()
}

/// Appends `events` to the outbox in `tx`, in order.
pub(super) async fn insert_outbox(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    events: &[NewOutboxEvent],
) -> Result<(), StoreError> {
    for e in events {
        sqlx::query(
            "INSERT INTO webhook_outbox (id, account_id, participant_id, url, event, body, \
                 created_at, attempts, next_at, state) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $7, 'pending')",
        )
        .bind(e.id.as_str())
        .bind(e.account.as_str())
        .bind(e.participant.to_string())
        .bind(e.url.as_str())
        .bind(e.event.as_str())
        .bind(e.body.as_str())
        .bind(e.created_at_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
