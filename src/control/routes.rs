//! The verbs that (re)compile forwarding tables: what the media plane reports it publishes,
//! a session's table on request, and the recompile after every change, serialized per session
//! and published as a diff on the event bus.

use std::collections::HashMap;

use super::{Control, ControlError};
use crate::domain::{AccountId, Participant, ParticipantId, SessionId};
use crate::forwarding::{ForwardingTable, Member, PublishedStream};

impl Control {
    /// The media plane reports what a participant publishes now; its session recompiles.
    pub async fn set_published(
        &self,
        account: &AccountId,
        participant: ParticipantId,
        streams: Vec<PublishedStream>,
    ) -> Result<(), ControlError> {
        let events = self.lock_routing().set_published(participant, streams);
        for event in events {
            self.device_event(event);
        }
        // What this process's media plane publishes concerns only its own devices.
        if let Some(session) = self.participant(account, participant).await?.session {
            self.recompile_here(account, session).await?;
        }
        Ok(())
    }

    /// The session's members and its forwarding table as compiled from their stored rules.
    pub async fn routes(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(Vec<Participant>, ForwardingTable), ControlError> {
        let members = self.inner.store.members(account, session).await?;
        let table = self.lock_routing().table(session, &rules_of(&members));
        Ok((members, table))
    }

    /// The last forwarding table published for every session with any route or link (for
    /// inspection and tests).
    pub fn tables_snapshot(&self) -> HashMap<SessionId, ForwardingTable> {
        self.lock_routing().tables_snapshot()
    }

    /// Reads the session's members, compiles and publishes the difference, in `session`'s turn.
    pub(super) async fn recompile(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(), ControlError> {
        self.recompile_here(account, session).await?;
        // Other processes sharing the database may hold devices of the session.
        self.ring(super::Ring::Session {
            account: account.clone(),
            session,
        });
        Ok(())
    }

    /// [`Control::recompile`] for this process's devices only.
    pub(super) async fn recompile_here(
        &self,
        account: &AccountId,
        session: SessionId,
    ) -> Result<(), ControlError> {
        self.compile_here(account, session, false).await
    }

    /// Reads the session's members and compiles its table, in the session's turn; with
    /// `only_if_concerned`, not when this process has neither a table for it nor a device of
    /// one of its members (another process's ring about a session of no concern here).
    pub(super) async fn compile_here(
        &self,
        account: &AccountId,
        session: SessionId,
        only_if_concerned: bool,
    ) -> Result<(), ControlError> {
        let _turn = self.inner.stripes.lock(session).await;
        let members = self.inner.store.members(account, session).await?;
        let here: Vec<_> = {
            let live = self.inner.live.lock().unwrap_or_else(|e| e.into_inner());
            members
                .iter()
                .filter(|m| live.has_participant(m.id))
                .map(|m| m.id)
                .collect()
        };
        if only_if_concerned && here.is_empty() && !self.lock_routing().has_table(session) {
            return Ok(());
        }
        // A device here of a session hosted elsewhere (it connected before its participant
        // joined the session) moves to the host.
        self.keep_on_host(session, &here).await;
        let (diff, kept) = {
            let mut routing = self.lock_routing();
            let diff = routing.compile(session, &rules_of(&members));
            (diff, routing.has_table(session))
        };
        {
            let mut hosted = self.inner.hosted.lock().unwrap_or_else(|e| e.into_inner());
            if kept {
                hosted.insert(session, account.clone());
            } else {
                hosted.remove(&session);
            }
        }
        if let Some(diff) = diff {
            self.publish_routes(session, diff);
        }
        Ok(())
    }
}

/// The members as the compiler sees them.
pub(super) fn rules_of(members: &[Participant]) -> Vec<Member> {
    members
        .iter()
        .map(|p| Member {
            id: p.id,
            publish: p.publish_permissions,
            subscriptions: p.subscriptions.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{test_session_of_two, ControlEvent, LifecycleEvent};
    use crate::domain::{MediaKinds, StreamAlias, StreamId, Subscriptions};
    use crate::forwarding::PublishedStream;

    #[tokio::test]
    async fn published_streams_route_and_raise_lifecycle_events() {
        let (control, account, s, a, b) = test_session_of_two().await;
        let whole = Subscriptions::new(Some(s.id), vec![]).unwrap();
        control
            .add_member(&account, s.id, a.id, Some(whole.clone()))
            .await
            .unwrap();
        control
            .add_member(&account, s.id, b.id, Some(whole))
            .await
            .unwrap();
        let mut events = control.watch();
        let stream = PublishedStream {
            publisher: b.id,
            stream: StreamId::parse("ms-b").unwrap(),
            alias: Some(StreamAlias::parse("cam").unwrap()),
            kinds: MediaKinds::ALL,
        };
        control
            .set_published(&account, b.id, vec![stream.clone()])
            .await
            .unwrap();
        let (_, table) = control.routes(&account, s.id).await.unwrap();
        assert_eq!(table.publishers_of(a.id).collect::<Vec<_>>(), vec![b.id]);
        assert!(
            table.publishers_of(b.id).next().is_none(),
            "a publishes nothing"
        );
        let mut seen = Vec::new();
        while let Ok(e) = events.try_recv() {
            seen.push(e);
        }
        assert!(seen.iter().any(|e| matches!(e, ControlEvent::Lifecycle(LifecycleEvent::StreamPublished { participant, .. }) if *participant == b.id)));
        assert!(seen
            .iter()
            .any(|e| matches!(e, ControlEvent::Routes(u) if u.diff.routes.upserted.len() == 1)));
        control.set_published(&account, b.id, vec![]).await.unwrap();
        let (_, table) = control.routes(&account, s.id).await.unwrap();
        assert!(table.routes.is_empty());
    }
}
