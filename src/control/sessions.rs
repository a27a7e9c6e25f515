//! The verbs on sessions, participants and membership: check, write the store, recompile the
//! affected session.

use std::time::SystemTime;

use super::{Control, ControlError, Resource};
use crate::domain::{
    AccountId, CallbackUrl, DeviceApiVersion, Participant, ParticipantId, PublishPermissions,
    Session, SessionId, Subscriptions, Tag,
};

/// What a new participant is created with.
#[derive(Debug, Clone, Default)]
pub struct NewParticipant {
    /// Where its lifecycle webhooks go.
    pub callback_url: Option<CallbackUrl>,
    /// What it may publish; everything when absent.
    pub publish_permissions: Option<PublishPermissions>,
    /// The backend's free-form label.
    pub tag: Option<Tag>,
    /// The protocol version it is created for; the default when absent.
    pub device_api_version: Option<DeviceApiVersion>,
}

impl Control {
    // ---- participants ---------------------------------------------------------------------

    /// Creates a participant and mints its device token.
    pub async fn create_participant(
        &self,
        account: &AccountId,
        new: NewParticipant,
    ) -> Result<(Participant, String), ControlError> {
        if let Some(url) = &new.callback_url {
            self.check_callback(url)?;
        }
        let participant = Participant {
            id: ParticipantId::random(),
            account: account.clone(),
            callback_url: new.callback_url,
            publish_permissions: new.publish_permissions.unwrap_or(PublishPermissions::ALL),
            tag: new.tag,
            device_api_version: new.device_api_version.unwrap_or_default(),
            session: None,
            subscriptions: Subscriptions::default(),
        };
        self.inner.store.create_participant(&participant).await?;
        // A token's expiry is wall-clock time, read once here where it is minted.
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now();
        let token = self.inner.tokens.mint(account, participant.id, now);
        Ok((participant, token))
    }

    /// A participant of `account`.
    pub async fn participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<Participant, ControlError> {
        self.inner
            .store
            .participant(account, id)
            .await?
            .ok_or(ControlError::NotFound(Resource::Participant))
    }

    /// Deletes a participant; its token stops working at once, and its devices on this process
    /// end: their `onDisconnect` (and a call's `onCallEnded`) are in the outbox when this
    /// returns, unless the database could not take them within the recorder's bound.
    pub async fn delete_participant(
        &self,
        account: &AccountId,
        id: ParticipantId,
    ) -> Result<(), ControlError> {
        let session = self.inner.store.delete_participant(account, id).await?;
        // Its devices' ends are recorded here, so that the deletion is acknowledged only once
        // they are in the outbox (not when the media plane has closed the devices).
        let ended = self.participant_gone(id);
        self.ring(super::Ring::ParticipantDeleted(id));
        let recompiled = match session {
            Some(session) => self.recompile(account, session).await,
            None => Ok(()),
        };
        for receipt in ended {
            // A database that cannot take them in time delays the answer by the recorder's
            // bound; the deletion happened, and the events are still written when it can.
            receipt.wait().await;
        }
        recompiled
    }

    // ---- sessions -------------------------------------------------------------------------

    /// Creates an empty session.
    pub async fn create_session(
        &self,
        account: &AccountId,
        tag: Option<Tag>,
    ) -> Result<Session, ControlError> {
        let session = Session {
            id: SessionId::random(),
            account: account.clone(),
            tag,
        };
        self.inner.store.create_session(&session).await?;
        Ok(session)
    }

    /// A session of `account`.
    pub async fn session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<Session, ControlError> {
        self.inner
            .store
            .session(account, id)
            .await?
            .ok_or(ControlError::NotFound(Resource::Session))
    }

    /// Deletes a session: its members leave it, with their subscriptions, and the routes it had
    /// are withdrawn.
    pub async fn delete_session(
        &self,
        account: &AccountId,
        id: SessionId,
    ) -> Result<(), ControlError> {
        self.inner.store.delete_session(account, id).await?;
        self.forget_session(id).await;
        self.ring(super::Ring::Session {
            account: account.clone(),
            session: id,
        });
        Ok(())
    }

    /// The session is gone: the routes it had here are withdrawn.
    pub(super) async fn forget_session(&self, id: SessionId) {
        let _turn = self.inner.stripes.lock(id).await;
        self.forget_speaker(id);
        self.inner
            .hosted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        let diff = self.lock_routing().forget(id);
        if let Some(diff) = diff {
            self.publish_routes(id, diff);
        }
    }

    /// The members of a session, ordered by id, with their subscriptions.
    pub async fn members(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<Vec<Participant>, ControlError> {
        Ok(self.inner.store.members(account, session).await?)
    }

    /// Adds a participant to a session (and replaces its rules when given).
    pub async fn add_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
        subscriptions: Option<Subscriptions>,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .add_member(account, session, participant, subscriptions.as_ref())
            .await?;
        self.recompile(account, session).await
    }

    /// Removes a participant from a session (with its subscriptions) and recompiles the session.
    pub async fn remove_member(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .remove_member(account, session, participant)
            .await?;
        self.recompile(account, session).await
    }

    /// A member's subscription rules.
    pub async fn subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        participant: ParticipantId,
    ) -> Result<Subscriptions, ControlError> {
        self.session(account, session).await?;
        let p = self.participant(account, participant).await?;
        if p.session != Some(session) {
            return Err(ControlError::NotFound(Resource::Member(Some(session))));
        }
        Ok(p.subscriptions)
    }

    /// Replaces the rules of one or several members of a session, atomically.
    pub async fn set_subscriptions(
        &self,
        account: &AccountId,
        session: SessionId,
        changes: &[(ParticipantId, Subscriptions)],
    ) -> Result<(), ControlError> {
        self.inner
            .store
            .set_subscriptions(account, session, changes)
            .await?;
        self.recompile(account, session).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::{test_session_of_two, ControlEvent};
    use super::*;
    use crate::domain::ParticipantSubscription;

    #[tokio::test]
    async fn rule_changes_publish_table_diffs() {
        let (control, account, s, a, b) = test_session_of_two().await;
        let mut updates = control.watch();
        control
            .add_member(&account, s.id, a.id, None)
            .await
            .unwrap();
        control
            .add_member(&account, s.id, b.id, None)
            .await
            .unwrap();
        let listing = Subscriptions::new(
            None,
            vec![ParticipantSubscription {
                participant: b.id,
                stream_aliases: vec![],
            }],
        )
        .unwrap();
        control
            .set_subscriptions(&account, s.id, &[(a.id, listing.clone())])
            .await
            .unwrap();
        let ControlEvent::Routes(u) = updates.recv().await.unwrap() else {
            panic!("routes")
        };
        assert_eq!(u.session, s.id);
        assert_eq!(u.diff.links.upserted.len(), 1);
        // Setting the same rules again changes nothing and publishes nothing.
        control
            .set_subscriptions(&account, s.id, &[(a.id, listing)])
            .await
            .unwrap();
        control.remove_member(&account, s.id, b.id).await.unwrap();
        let ControlEvent::Routes(u) = updates.recv().await.unwrap() else {
            panic!("routes")
        };
        assert_eq!(
            u.diff.links.removed.len(),
            1,
            "the link to b went away, and nothing came before"
        );
    }
}
