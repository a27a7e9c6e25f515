//! What a live call needs to be resumed by another process (issue 19), kept in the store: the
//! subscribe layouts of devices (what each device's subscribe connection looks like to it,
//! `domain::SubscribeLayout`: the media plane reports one after every offer it makes, and a
//! connecting device's stored layout goes with it to the media plane), the ICE credentials of
//! their publish connections, and phone calls' dialogs (the SIP bridge's own records).

use super::{Control, ControlError};
use crate::domain::{ParticipantId, PublishCredentials, StoredPhoneCall, SubscribeLayout};

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

    /// Keeps what the SIP bridge needs to take `participant`'s phone call `call` over in
    /// another process.
    pub async fn save_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
        record: &str,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .save_phone_call(participant, call, record)
            .await?;
        Ok(())
    }

    /// Forgets `participant`'s stored call `call` (it ended).
    pub async fn forget_phone_call(
        &self,
        participant: ParticipantId,
        call: &str,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .forget_phone_call(participant, call)
            .await?;
        Ok(())
    }

    /// Every stored phone call.
    pub async fn phone_calls(&self) -> Result<Vec<StoredPhoneCall>, ControlError> {
        Ok(self.inner.store.phone_calls().await?)
    }

    /// Takes a stored call over for this process, if it is still as read: whether this
    /// process got it (else another ended or took it meanwhile).
    pub async fn take_phone_call(
        &self,
        call: &StoredPhoneCall,
        now_ms: i64,
    ) -> Result<bool, ControlError> {
        Ok(self
            .inner
            .store
            .take_phone_call(call.participant, &call.call, call.updated_at_ms, now_ms)
            .await?)
    }

    /// Forgets a stored call this process ends, if it is still as read: whether this process
    /// got it (else another ended or took it meanwhile).
    pub async fn end_phone_call(&self, call: &StoredPhoneCall) -> Result<bool, ControlError> {
        Ok(self
            .inner
            .store
            .end_phone_call(call.participant, &call.call, call.updated_at_ms)
            .await?)
    }

    /// The SIP address every process on the database records (`None`: it advertises none),
    /// live or not yet accounted for: a call whose owner is none of them has no successor.
    pub async fn process_sip_addresses(&self) -> Result<Vec<Option<String>>, ControlError> {
        Ok(self
            .inner
            .store
            .instances()
            .await?
            .into_iter()
            .map(|i| i.record.sip)
            .collect())
    }
}
