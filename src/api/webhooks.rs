//! Webhook endpoints (beyond Bandwidth): a participant's delivery log, and the account's
//! choice of events (`bandwidthOnly`: only `onConnect`, `onLeave`, `onDisconnect`;
//! `activeSpeakerEvents`: patchbay's `onActiveSpeaker`, off by default).

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::BodyError;
use super::extract::{OptionalJson, Scope};
use super::{AppState, Error};
use crate::control::{DeliveryAttempt, WebhookOptIn};

/// How many attempts the delivery log shows.
const DELIVERY_LOG_LIMIT: u32 = 100;

/// One delivery attempt.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    /// The event's id (its `webhook-id` header).
    pub event_id: String,
    /// The event type (`onConnect`, …).
    pub event: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, when the receiver did not answer.
    pub error: Option<String>,
    /// When the attempt ended, epoch milliseconds.
    pub at: i64,
}

impl From<DeliveryAttempt> for AttemptView {
    fn from(a: DeliveryAttempt) -> AttemptView {
        AttemptView {
            event_id: a.event_id,
            event: a.event,
            attempt: a.attempt,
            status: a.status,
            error: a.error,
            at: a.at_ms,
        }
    }
}

/// A participant's recent delivery attempts, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryLogView {
    /// At most 100 attempts, newest first.
    pub attempts: Vec<AttemptView>,
}

/// The account's webhook settings.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSettingsView {
    /// Send only Bandwidth's three events.
    pub bandwidth_only: bool,
    /// Send patchbay's `onActiveSpeaker` (off by default; `bandwidthOnly` wins).
    pub active_speaker_events: bool,
    /// Send patchbay's `onQualityChanged` (off by default; `bandwidthOnly` wins).
    pub quality_events: bool,
}

impl WebhookSettingsView {
    fn new(s: &crate::control::AccountWebhooks) -> WebhookSettingsView {
        WebhookSettingsView {
            bandwidth_only: s.bandwidth_only,
            active_speaker_events: s.active_speaker_events,
            quality_events: s.quality_events,
        }
    }
}

/// A change of the account's webhook settings: each field given is set, the others kept.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSettingsUpdate {
    /// Send only Bandwidth's three events.
    pub bandwidth_only: Option<bool>,
    /// Send patchbay's `onActiveSpeaker`.
    pub active_speaker_events: Option<bool>,
    /// Send patchbay's `onQualityChanged`.
    pub quality_events: Option<bool>,
}

/// A participant's webhook delivery log.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/participants/{participantId}/webhooks", operation_id = "getWebhookDeliveries",
    tag = "webhooks", params(("accountId" = String, Path), ("participantId" = String, Path)),
    responses((status = 200, body = DeliveryLogView), (status = 401, body = super::UnauthorizedBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn delivery_log(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<DeliveryLogView>, Error> {
    let attempts = state
        .control
        .delivery_log(&scope.account, scope.participant()?, DELIVERY_LOG_LIMIT)
        .await?;
    Ok(Json(DeliveryLogView {
        attempts: attempts.into_iter().map(AttemptView::from).collect(),
    }))
}

/// The account's webhook settings.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/webhooks", operation_id = "getWebhookSettings",
    tag = "webhooks", params(("accountId" = String, Path)),
    responses((status = 200, body = WebhookSettingsView), (status = 401, body = super::UnauthorizedBody)))]
pub async fn settings(
    State(state): State<AppState>,
    scope: Scope,
) -> Result<Json<WebhookSettingsView>, Error> {
    let s = state.control.account_webhooks(&scope.account).await?;
    Ok(Json(WebhookSettingsView::new(&s)))
}

/// Chooses the account's webhook events.
#[utoipa::path(put, path = "/v1/accounts/{accountId}/webhooks", operation_id = "setWebhookSettings",
    tag = "webhooks", params(("accountId" = String, Path)), request_body = WebhookSettingsUpdate,
    responses((status = 200, body = WebhookSettingsView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody)))]
pub async fn set_settings(
    State(state): State<AppState>,
    scope: Scope,
    OptionalJson(body): OptionalJson<WebhookSettingsUpdate>,
) -> Result<Json<WebhookSettingsView>, Error> {
    // The project's body extractor: garbage gets the JSON error body naming what is wrong.
    let body = body.ok_or(Error::Body(BodyError::Missing(
        r#"{"bandwidthOnly": true|false, "activeSpeakerEvents": true|false, "qualityEvents": true|false}"#,
    )))?;
    if let Some(on) = body.bandwidth_only {
        state
            .control
            .set_webhook_bandwidth_only(&scope.account, on)
            .await?;
    }
    let opt_ins = [
        (WebhookOptIn::ActiveSpeaker, body.active_speaker_events),
        (WebhookOptIn::QualityChanged, body.quality_events),
    ];
    for (event, on) in opt_ins {
        if let Some(on) = on {
            state
                .control
                .set_webhook_opt_in(&scope.account, event, on)
                .await?;
        }
    }
    let s = state.control.account_webhooks(&scope.account).await?;
    Ok(Json(WebhookSettingsView::new(&s)))
}
