//! Devices: the one verification of a device token (for the WebSocket and the SIP bridge) and
//! the lifecycle events devices report.

use super::{Control, ControlEvent, DeviceTokenError, LifecycleEvent};
use crate::domain::{Participant, ParticipantId};
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
            .remove(&(participant, device.to_owned()));
    }

    /// Records a lifecycle event of a device (connected, disconnected) for whoever watches,
    /// and for the webhook outbox: the receipt says when it is there.
    pub fn device_event(&self, event: LifecycleEvent) -> super::webhooks::Recorded {
        tracing::info!(?event, "device lifecycle");
        {
            let mut live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
            match &event {
                LifecycleEvent::Connected {
                    participant,
                    device,
                    ..
                } => {
                    live.insert((*participant, device.clone()));
                }
                LifecycleEvent::Disconnected {
                    participant,
                    device,
                    ..
                } => {
                    live.remove(&(*participant, device.clone()));
                }
                _ => {}
            }
        }
        let recorded = self.inner.webhooks.record(&event);
        self.inner.events.send(ControlEvent::Lifecycle(event));
        recorded
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
