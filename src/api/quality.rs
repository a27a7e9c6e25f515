//! patchbay: `GET …/sessions/{s}/participants/{p}/quality`, what the media plane measured of
//! a member's device (issue 21), and its wire shape. Field meanings and units are in the
//! README ("Media quality").

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::Scope;
use super::{AppState, Error};
use crate::control::MemberQuality;
use crate::domain::{
    ConnectionQuality, ParticipantId, QualityDevice, QualityLevel, SessionId, TrackQuality,
    STATS_INTERVAL_MS,
};

/// A member's measured media quality on the process that answered.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QualityView {
    pub session_id: String,
    pub participant_id: String,
    /// The member has a device on this process's media plane.
    pub connected: bool,
    /// Not connected here, and the session is hosted by another process of the cluster: ask
    /// that one (any process's answer covers only its own devices).
    pub hosted_elsewhere: bool,
    /// `browser` or `phone`; `null` when not connected.
    #[schema(value_type = Option<String>, example = "browser")]
    pub device: Option<&'static str>,
    /// `good`, `fair` or `poor`: the worse of the two connections' latest samples against
    /// fixed thresholds of loss, round-trip time and audio jitter, and `poor` while video is
    /// paused for the subscriber's thin link (README, "Media quality"). `null` when nothing
    /// current is measured (not connected, or no sample yet).
    #[schema(value_type = Option<String>, example = "good")]
    pub level: Option<&'static str>,
    /// How often statistics are sampled, milliseconds.
    pub stats_interval_ms: u64,
    /// The device's publish connection (media it sends; a phone's: its RTP leg toward the
    /// server, before its first report `null`): `null` if it has none (a browser that has not
    /// published).
    pub publish: Option<PublishQuality>,
    /// The device's subscribe connection (media it receives): `null` if it has none yet.
    pub subscribe: Option<SubscribeQuality>,
}

/// What the server received on a publish connection.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishQuality {
    pub connected: bool,
    pub sample_age_ms: Option<u64>,
    /// Received RTP payload bits per second, all tracks, over the last sample interval.
    pub bitrate_bps: Option<u64>,
    pub bytes: u64,
    pub packets: u64,
    /// The worst track's loss fraction (0–1) in the last receiver report the server sent.
    pub loss_fraction: Option<f32>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// NACK messages the server sent to the device.
    pub nacks_sent: u64,
    /// PLIs the server sent to the device.
    pub plis_sent: u64,
    /// FIRs the server sent to the device.
    pub firs_sent: u64,
    /// Keyframes the server asked of this publisher (after merging).
    pub keyframe_requests_sent: u64,
    /// The REMB ceiling the server holds this publisher's video to, bits per second: set
    /// while one of its video tracks has a single viewer whose link is congested
    /// (`--subscriber-bwe`); `null` otherwise.
    pub video_ceiling_bps: Option<u64>,
    pub tracks: Vec<TrackView>,
}

/// What the server sent on a subscribe connection, and what the device reported of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeQuality {
    pub connected: bool,
    pub sample_age_ms: Option<u64>,
    /// Sent RTP payload bits per second, all tracks, over the last sample interval.
    pub bitrate_bps: Option<u64>,
    pub bytes: u64,
    pub packets: u64,
    /// The worst track's loss fraction (0–1) the device reported in the last interval.
    pub loss_fraction: Option<f32>,
    /// Packets the device reported lost, all tracks.
    pub packets_lost: Option<u64>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// NACK messages received from the device.
    pub nacks_received: u64,
    /// PLIs received from the device.
    pub plis_received: u64,
    /// FIRs received from the device.
    pub firs_received: u64,
    /// The device's PLIs/FIRs passed on to a publisher.
    pub keyframe_requests_forwarded: u64,
    /// The device's PLIs/FIRs not passed on (merged, held while its link is short, or none
    /// could be sent).
    pub keyframe_requests_suppressed: u64,
    /// The link's bandwidth estimate, bits per second (`--subscriber-bwe`; `null` without
    /// one).
    pub estimate_bps: Option<u64>,
    /// Video tracks not sent because the link cannot carry them (audio first).
    pub paused_video_tracks: u32,
    pub tracks: Vec<TrackView>,
}

/// One track (m-line) of a connection, in the connection's direction.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackView {
    pub mid: String,
    /// `AUDIO` or `VIDEO`.
    #[schema(value_type = Option<String>, example = "VIDEO")]
    pub kind: Option<&'static str>,
    pub bitrate_bps: Option<u64>,
    pub bytes: u64,
    pub packets: u64,
    pub loss_fraction: Option<f32>,
    /// Subscribe tracks only (`null` on publish tracks).
    pub packets_lost: Option<u64>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Publish: sent to the device; subscribe: received from it.
    pub nacks: u64,
    pub plis: u64,
    pub firs: u64,
}

impl TrackView {
    fn new(t: &TrackQuality) -> TrackView {
        TrackView {
            mid: t.mid.clone(),
            kind: t.kind.map(|k| k.as_str()),
            bitrate_bps: t.bitrate_bps,
            bytes: t.bytes,
            packets: t.packets,
            loss_fraction: t.loss_fraction,
            packets_lost: t.packets_lost,
            rtt_ms: t.rtt_ms,
            jitter_ms: t.jitter_ms,
            nacks: t.nacks,
            plis: t.plis,
            firs: t.firs,
        }
    }
}

impl PublishQuality {
    fn new(c: &ConnectionQuality) -> PublishQuality {
        PublishQuality {
            connected: c.connected,
            sample_age_ms: c.sample_age_ms,
            bitrate_bps: c.bitrate_bps,
            bytes: c.bytes,
            packets: c.packets,
            loss_fraction: c.loss_fraction,
            rtt_ms: c.rtt_ms,
            jitter_ms: c.jitter_ms,
            nacks_sent: c.nacks,
            plis_sent: c.plis,
            firs_sent: c.firs,
            keyframe_requests_sent: c.keyframe_requests,
            video_ceiling_bps: c.video_ceiling_bps,
            tracks: c.tracks.iter().map(TrackView::new).collect(),
        }
    }
}

impl SubscribeQuality {
    fn new(c: &ConnectionQuality) -> SubscribeQuality {
        SubscribeQuality {
            connected: c.connected,
            sample_age_ms: c.sample_age_ms,
            bitrate_bps: c.bitrate_bps,
            bytes: c.bytes,
            packets: c.packets,
            loss_fraction: c.loss_fraction,
            packets_lost: c.packets_lost,
            rtt_ms: c.rtt_ms,
            jitter_ms: c.jitter_ms,
            nacks_received: c.nacks,
            plis_received: c.plis,
            firs_received: c.firs,
            keyframe_requests_forwarded: c.keyframe_requests,
            keyframe_requests_suppressed: c.keyframe_requests_suppressed,
            estimate_bps: c.estimate_bps,
            paused_video_tracks: c.paused_video_tracks,
            tracks: c.tracks.iter().map(TrackView::new).collect(),
        }
    }
}

impl QualityView {
    /// The view of what control answered.
    pub fn new(session: SessionId, participant: ParticipantId, q: &MemberQuality) -> QualityView {
        let m = q.measured.as_ref();
        QualityView {
            session_id: session.to_string(),
            participant_id: participant.to_string(),
            connected: m.is_some(),
            hosted_elsewhere: q.hosted_elsewhere,
            device: m.map(|m| match m.device {
                QualityDevice::Browser => "browser",
                QualityDevice::Phone => "phone",
            }),
            level: m.and_then(|m| m.level()).map(QualityLevel::as_str),
            stats_interval_ms: STATS_INTERVAL_MS,
            publish: m.and_then(|m| m.publish.as_ref()).map(PublishQuality::new),
            subscribe: m
                .and_then(|m| m.subscribe.as_ref())
                .map(SubscribeQuality::new),
        }
    }
}

/// patchbay: what the media plane of the process answering measured of a member's device:
/// bitrate, loss, RTT, jitter, NACKs, PLIs/FIRs and keyframe requests, per connection and
/// track. A member with no device here answers `connected: false`.
#[utoipa::path(get, path = "/v1/accounts/{accountId}/sessions/{sessionId}/participants/{participantId}/quality",
    operation_id = "getParticipantQuality", tag = "patchbay",
    params(("accountId" = String, Path), ("sessionId" = String, Path), ("participantId" = String, Path)),
    responses((status = 200, body = QualityView), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::UnauthorizedBody), (status = 404, body = super::ErrorBody)))]
pub async fn get(State(state): State<AppState>, scope: Scope) -> Result<Json<QualityView>, Error> {
    let session = scope.session()?;
    let participant = scope.participant()?;
    let quality = state
        .control
        .quality(&scope.account, session, participant)
        .await?;
    Ok(Json(QualityView::new(session, participant, &quality)))
}
