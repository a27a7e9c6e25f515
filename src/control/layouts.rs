//! The subscribe layouts of devices: what each device's subscribe connection looks like to it
//! (`domain::SubscribeLayout`), kept in the store so that a process that never met the device
//! (after a restart) can resume the connection. The media plane reports a layout after every
//! offer it makes; a connecting device's stored layout goes with it to the media plane.

use super::{Control, ControlError};
use crate::domain::{ParticipantId, PublishCredentials, SubscribeLayout};

impl Control {
    /// Keeps the layout the media plane last offered `participant`'s device.
    pub async fn save_subscribe_layout(
        &self,
        participant: ParticipantId,
        layout: &SubscribeLayout,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .save_subscribe_layout(participant, layout)
            .await?;
        Ok(())
    }

    /// The stored layout of `participant`'s device, if any.
    pub async fn subscribe_layout(
        &self,
        participant: ParticipantId,
    ) -> Result<Option<SubscribeLayout>, ControlError> {
        Ok(self.inner.store.subscribe_layout(participant).await?)
    }

    /// Forgets the layout of SDK instance `unique_id` of `participant` (its device left).
    pub async fn forget_subscribe_layout(
        &self,
        participant: ParticipantId,
        unique_id: &str,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .forget_subscribe_layout(participant, unique_id)
            .await?;
        Ok(())
    }

    /// Keeps the ICE credentials the media plane gave a device's publish connection.
    pub async fn save_publish_credentials(
        &self,
        credentials: &PublishCredentials,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .save_publish_credentials(credentials)
            .await?;
        Ok(())
    }

    /// Every stored publish connection's credentials (a starting process reads them, to
    /// refuse the checks of the connections its predecessor answered).
    pub async fn publish_credentials(&self) -> Result<Vec<PublishCredentials>, ControlError> {
        Ok(self.inner.store.publish_credentials().await?)
    }
}
