//! The quality view (issue 21, "measure first"): what this process's media plane measured of
//! a session member's device, for `GET …/participants/{p}/quality`.
//!
//! Like the session's `routes` view, it answers from this process's own state: media never
//! crosses processes, so a member whose device is served by another process (its session is
//! hosted there) is not measured here. The answer says so ([`MemberQuality::hosted_elsewhere`]),
//! from the store's placement, instead of asking that process.
//!
//! For the operator (`patchbay session inspect`, which reads the database), each process also
//! writes a summary of what it measured to the store every few seconds
//! ([`Control::record_quality`], table `live_quality`); [`quality_summary`] is its shape.

use serde_json::{json, Value};

use super::{Control, ControlError, Resource};
use crate::domain::{
    AccountId, ConnectionQuality, LifecycleEvent, ParticipantId, ParticipantQuality, QualityDevice,
    QualityLevel, SessionId,
};

/// What `GET …/participants/{p}/quality` answers.
#[derive(Debug, Clone)]
pub struct MemberQuality {
    /// What the member's device here measured; `None`: it has no device on this process.
    pub measured: Option<ParticipantQuality>,
    /// Nothing measured here, and the session is placed on another process (a cluster on
    /// PostgreSQL): a device of the member, if it has one, is served and measured there.
    pub hosted_elsewhere: bool,
}

impl Control {
    /// The quality measured of `participant`, a member of `session`. Not found: the session,
    /// the participant, or its membership of the session.
    pub async fn quality(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<MemberQuality, ControlError> {
        self.session(account, session).await?;
        let p = self.participant(account, participant).await?;
        if p.session != Some(session) {
            return Err(ControlError::NotFound(Resource::Member(Some(session))));
        }
        let measured = match self.media() {
            Some(media) => media
                .quality(participant)
                .await
                .map_err(|e| ControlError::Internal { source: e.into() })?,
            None => None,
        };
        let hosted_elsewhere = measured.is_none() && self.hosted_elsewhere(session).await?;
        Ok(MemberQuality {
            measured,
            hosted_elsewhere,
        })
    }
}

impl Control {
    /// `session` is placed on another process of the cluster (never on SQLite, where one
    /// process serves).
    pub(super) async fn hosted_elsewhere(&self, session: SessionId) -> Result<bool, ControlError> {
        Ok(self.places_sessions()
            && self
                .inner
                .store
                .session_host(session)
                .await?
                .is_some_and(|h| h.instance != self.inner.instance))
    }

    /// Writes what this process's media plane measured of its devices to the store, stamped
    /// `now_ms` (this process's clock); returns how many participants were written. Without a
    /// media plane, nothing; with no device and `skip_if_none` (the last write had none
    /// either), nothing is written.
    pub async fn record_quality(
        &self,
        now_ms: i64,
        skip_if_none: bool,
    ) -> Result<usize, ControlError> {
        let Some(media) = self.media() else {
            return Ok(0);
        };
        let measured = media
            .qualities()
            .await
            .map_err(|e| ControlError::Internal { source: e.into() })?;
        self.watch_levels(&measured);
        let rows: Vec<(ParticipantId, String)> = measured
            .iter()
            .map(|(p, q)| (*p, quality_summary(q).to_string()))
            .collect();
        if rows.is_empty() && skip_if_none {
            return Ok(0);
        }
        self.inner
            .store
            .record_quality(&self.inner.instance, &rows, self.lease_ms(now_ms))
            .await?;
        Ok(rows.len())
    }
}

impl Control {
    /// Each measured participant's level goes through its [`LevelWatch`]; a change that held
    /// is raised as [`LifecycleEvent::QualityChanged`] (the opt-in `onQualityChanged`).
    /// Participants no longer measured here are forgotten.
    fn watch_levels(&self, measured: &[(ParticipantId, ParticipantQuality)]) {
        let changes: Vec<LifecycleEvent> = {
            let mut watches = self
                .inner
                .quality_levels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            watches.retain(|p, _| measured.iter().any(|(m, _)| m == p));
            measured
                .iter()
                .filter_map(|(participant, q)| {
                    let (previous, level) = watches
                        .entry(*participant)
                        .or_default()
                        .observe(q.level())?;
                    Some(LifecycleEvent::QualityChanged {
                        participant: *participant,
                        session: q.session?,
                        level,
                        previous,
                    })
                })
                .collect()
        };
        let generation = self.beats().generation;
        for event in changes {
            tracing::debug!(?event, "quality level changed");
            // Nothing waits for it: the receipt is dropped.
            let _ = self.inner.webhooks.record(&event, generation);
            self.inner
                .events
                .send(super::ControlEvent::Lifecycle(event));
        }
    }
}

/// The summary of a participant's quality the store keeps (the REST view's connection fields,
/// without the tracks), as the operator commands read it.
pub fn quality_summary(q: &ParticipantQuality) -> Value {
    let device = match q.device {
        QualityDevice::Browser => "browser",
        QualityDevice::Phone => "phone",
    };
    json!({
        "device": device,
        "level": q.level().map(QualityLevel::as_str),
        "publish": q.publish.as_ref().map(connection_summary),
        "subscribe": q.subscribe.as_ref().map(connection_summary),
    })
}

fn connection_summary(c: &ConnectionQuality) -> Value {
    json!({
        "connected": c.connected,
        "bitrateBps": c.bitrate_bps,
        "bytes": c.bytes,
        "packets": c.packets,
        "lossFraction": c.loss_fraction,
        "packetsLost": c.packets_lost,
        "rttMs": c.rtt_ms,
        "jitterMs": c.jitter_ms,
        "nacks": c.nacks,
        "plis": c.plis,
        "firs": c.firs,
        "keyframeRequests": c.keyframe_requests,
        "keyframeRequestsSuppressed": c.keyframe_requests_suppressed,
        "estimateBps": c.estimate_bps,
        "pausedVideoTracks": c.paused_video_tracks,
        "videoCeilingBps": c.video_ceiling_bps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_the_connection_fields_and_drops_the_tracks() {
        let mut publish = ConnectionQuality {
            connected: true,
            bitrate_bps: Some(1_000),
            loss_fraction: Some(0.5),
            keyframe_requests: 3,
            ..ConnectionQuality::default()
        };
        publish.tracks.push(crate::domain::TrackQuality::default());
        let q = ParticipantQuality {
            device: QualityDevice::Browser,
            session: None,
            publish: Some(publish),
            subscribe: None,
        };
        let v = quality_summary(&q);
        assert_eq!(v["device"], "browser");
        assert_eq!(v["publish"]["bitrateBps"], 1_000);
        assert_eq!(v["publish"]["lossFraction"], 0.5);
        assert_eq!(v["publish"]["keyframeRequests"], 3);
        assert!(v["publish"].get("tracks").is_none());
        assert!(v["subscribe"].is_null());
    }
}
