//! Devices: the one verification of a device token (for the WebSocket and the SIP bridge) and
//! the lifecycle events devices report.

use std::collections::HashMap;

use super::{Control, ControlEvent, DeviceTokenError, LifecycleEvent};
use crate::domain::{CallEndReason, Participant, ParticipantId};
use crate::token::{DeviceClaims, TokenError};

/// A device that presented a valid token of an existing participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDevice {
    /// The token's claims.
    pub claims: DeviceClaims,
    /// The participant it names, as stored now.
    pub participant: Participant,
}

impl Control {
    /// The one verification of a device token, for the WebSocket and the SIP bridge: a valid
    /// signature, not expired, protocol v3, and the participant still exists.
    pub async fn verify_device_token(
        &self,
        token: &str,
    ) -> Result<VerifiedDevice, DeviceTokenError> {
        let claims = self.decode_device_token(token).await?;
        let participant = self
            .inner
            .store
            .participant(&claims.account, claims.participant)
            .await
            .map_err(super::ControlError::from)?
            .ok_or(DeviceTokenError::Token(TokenError::Revoked))?;
        Ok(VerifiedDevice {
            claims,
            participant,
        })
    }

    /// `participant`'s device `device` stops counting as this process's without an event (a
    /// phone call a graceful stop leaves up for the next process).
    pub fn forget_device(&self, participant: ParticipantId, device: &str) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(participant, device);
    }

    /// Records a lifecycle event of a device (connected, disconnected) for whoever watches,
    /// and for the webhook outbox: the receipt says when it is there. The end of a device
    /// whose end control recorded already (its participant was deleted) is not recorded twice.
    pub fn device_event(&self, event: LifecycleEvent) -> super::webhooks::Recorded {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.ended_already(&event) {
            tracing::debug!(?event, "device lifecycle, recorded already at its deletion");
            return super::webhooks::Recorded::ready();
        }
        self.record_device_event(&mut live, event)
    }

    /// Records `event`, with the live-device lock held so that the feed's order is the order
    /// of the changes to the live devices.
    fn record_device_event(
        &self,
        live: &mut LiveDevices,
        event: LifecycleEvent,
    ) -> super::webhooks::Recorded {
        tracing::info!(?event, "device lifecycle");
        live.apply(&event);
        let generation = self.beats().generation;
        let recorded = self.inner.webhooks.record(&event, generation);
        self.inner.events.send(ControlEvent::Lifecycle(event));
        recorded
    }

    /// The participant's devices on this process end because it was deleted: their end events
    /// (`onDisconnect`, and `onCallEnded` for a call) are recorded now, before the deletion is
    /// acknowledged, and the same events reported later, when the media plane has closed the
    /// devices, are not recorded again. The receipts of the events recorded.
    pub(super) fn end_devices_of(&self, participant: ParticipantId) -> Vec<super::Recorded> {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        let ended = live.end_all_of(participant);
        let mut receipts = Vec::new();
        for (device, kind) in ended {
            // As the devices' own ends say it: a browser closed for its deletion and a call
            // the server hung up both end without leaving (`onDisconnect`).
            receipts.push(self.record_device_event(
                &mut live,
                LifecycleEvent::Disconnected {
                    participant,
                    device: device.clone(),
                    left: false,
                },
            ));
            if kind == DeviceKind::Phone {
                receipts.push(self.record_device_event(
                    &mut live,
                    LifecycleEvent::CallEnded {
                        participant,
                        call: device,
                        reason: CallEndReason::Ended,
                    },
                ));
            }
        }
        receipts
    }
}

impl Control {
    /// Whether the participant's device `device` is connected to this process.
    pub fn is_live(&self, participant: ParticipantId, device: &str) -> bool {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(participant, device.to_owned()))
    }

    /// A phone call of `participant` is answered: its `onConnect` and `onCallAnswered` are
    /// recorded together (nothing can come between them), unless the participant already has
    /// a device here (`None`: a second call with the same token is refused).
    pub fn phone_answering(
        &self,
        participant: ParticipantId,
        call: &str,
    ) -> Option<[super::Recorded; 2]> {
        let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.has_participant(participant) {
            return None;
        }
        let connected = self.record_device_event(
            &mut live,
            LifecycleEvent::Connected {
                participant,
                device: call.to_owned(),
                resumed: false,
            },
        );
        let answered = self.record_device_event(
            &mut live,
            LifecycleEvent::CallAnswered {
                participant,
                call: call.to_owned(),
            },
        );
        Some([connected, answered])
    }

    /// Whether the participant has a phone call here.
    pub(super) fn has_phone_here(&self, participant: ParticipantId) -> bool {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .has_phone(participant)
    }
}

/// What a heartbeat has seen so far (see [`Control::heartbeat`]).
#[derive(Debug, Default)]
pub(super) struct BeatState {
    /// This process has beaten once.
    pub(super) beaten: bool,
    /// It was fenced since it was last found alive.
    pub(super) fenced: bool,
    /// Since when (epoch milliseconds) every beat succeeded; `None` after a failed one.
    pub(super) ok_since: Option<i64>,
    /// The epoch of this process's registration, which its writes carry; `None` before the
    /// first beat.
    pub(super) epoch: Option<i64>,
    /// How many times this process was fenced: the generation of the events raised now.
    pub(super) generation: u64,
    /// This process stops: its row is gone on purpose, it beats, fences and reaps no more.
    pub(super) stopped: bool,
}

/// What kind of device a live device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceKind {
    Browser,
    /// Known from its `onCallAnswered` (or the resumption of its call).
    Phone,
}

/// How many ended devices wait for their end to be reported by the media plane at most (it
/// comes within moments; this only bounds the memory if one never comes): beyond it, the
/// earliest ended are forgotten.
const ENDED_KEPT: u64 = 65_536;

/// The devices connected to this process (by participant and `uniqueId`, the call's name for
/// phones), and the devices whose end control recorded at their participant's deletion.
#[derive(Debug, Default)]
pub(super) struct LiveDevices {
    live: HashMap<(ParticipantId, String), DeviceKind>,
    /// The events still to come for each ended device (its `onDisconnect`, then a call's
    /// `onCallEnded`), and its number among the ended.
    ended: HashMap<(ParticipantId, String), (u8, u64)>,
    /// How many devices were ended.
    ended_count: u64,
}

impl LiveDevices {
    /// How many devices are connected.
    pub(super) fn count(&self) -> usize {
        self.live.len()
    }

    /// The participants with a device connected.
    pub(super) fn participants(&self) -> std::collections::BTreeSet<ParticipantId> {
        self.live.keys().map(|(p, _)| *p).collect()
    }

    /// Forgets every device's end (what their closing reports is not recorded): the devices
    /// of a process taken for dead, whose ends another process wrote. Their participants.
    pub(super) fn forget_all(&mut self) -> std::collections::BTreeSet<ParticipantId> {
        let participants = self.participants();
        for &participant in &participants {
            self.end_all_of(participant);
        }
        participants
    }

    /// Whether the participant has a phone call connected.
    pub(super) fn has_phone(&self, participant: ParticipantId) -> bool {
        self.live
            .iter()
            .any(|((p, _), kind)| *p == participant && *kind == DeviceKind::Phone)
    }

    /// Whether the participant has a device connected.
    pub(super) fn has_participant(&self, participant: ParticipantId) -> bool {
        self.live.keys().any(|(p, _)| *p == participant)
    }

    /// Whether this device is connected.
    pub(super) fn contains(&self, key: &(ParticipantId, String)) -> bool {
        self.live.contains_key(key)
    }

    /// The device stops counting as connected, without an event.
    pub(super) fn forget(&mut self, participant: ParticipantId, device: &str) {
        self.live.remove(&(participant, device.to_owned()));
    }

    fn apply(&mut self, event: &LifecycleEvent) {
        match event {
            LifecycleEvent::Connected {
                participant,
                device,
                ..
            } => {
                self.live
                    .insert((*participant, device.clone()), DeviceKind::Browser);
            }
            LifecycleEvent::CallAnswered { participant, call }
            | LifecycleEvent::CallResumed { participant, call } => {
                if let Some(kind) = self.live.get_mut(&(*participant, call.clone())) {
                    *kind = DeviceKind::Phone;
                }
            }
            LifecycleEvent::Disconnected {
                participant,
                device,
                ..
            } => {
                self.live.remove(&(*participant, device.clone()));
            }
            _ => {}
        }
    }

    /// Whether `event` is one of the end events of a device ended at its participant's
    /// deletion (it is then consumed).
    fn ended_already(&mut self, event: &LifecycleEvent) -> bool {
        let key = match event {
            LifecycleEvent::Disconnected {
                participant,
                device,
                ..
            } => (*participant, device.clone()),
            LifecycleEvent::CallEnded {
                participant, call, ..
            } => (*participant, call.clone()),
            _ => return false,
        };
        let Some((remaining, _)) = self.ended.get_mut(&key) else {
            return false;
        };
        *remaining -= 1;
        if *remaining == 0 {
            self.ended.remove(&key);
        }
        true
    }

    /// Every connected device of `participant` ends now: each is expected to report its end
    /// once more, which [`LiveDevices::ended_already`] then consumes.
    fn end_all_of(&mut self, participant: ParticipantId) -> Vec<(String, DeviceKind)> {
        if self.ended.len() as u64 >= ENDED_KEPT {
            let oldest = self.ended_count.saturating_sub(ENDED_KEPT / 2);
            self.ended.retain(|_, (_, number)| *number >= oldest);
        }
        let keys: Vec<_> = self
            .live
            .keys()
            .filter(|(p, _)| *p == participant)
            .cloned()
            .collect();
        let mut ended = Vec::new();
        for key in keys {
            if let Some(kind) = self.live.remove(&key) {
                let events = match kind {
                    DeviceKind::Browser => 1,
                    DeviceKind::Phone => 2,
                };
                self.ended_count += 1;
                self.ended.insert(key.clone(), (events, self.ended_count));
                ended.push((key.1, kind));
            }
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_control, DeviceTokenError, NewParticipant};
    use crate::token::TokenError;

    #[tokio::test]
    async fn deleting_a_participant_revokes_its_token() {
        let (control, account) = test_control().await;
        let (p, token) = control
            .create_participant(&account, NewParticipant::default())
            .await
            .unwrap();
        let device = control.verify_device_token(&token).await.unwrap();
        assert_eq!(device.participant.id, p.id);
        control.delete_participant(&account, p.id).await.unwrap();
        assert!(matches!(
            control.verify_device_token(&token).await,
            Err(DeviceTokenError::Token(TokenError::Revoked))
        ));
    }
}
