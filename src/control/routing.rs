//! The routing core: what each participant publishes and the last table published per
//! session. Pure: no I/O, no locks, no clock. [`Control`](super::Control) keeps one behind a
//! mutex and feeds it members read from the store; the media engine's tests drive it directly.
//!
//! Each compile diffs the new table against the last one of the session and keeps the new one,
//! so the media plane only ever receives differences; [`Routing::tables_snapshot`] gives
//! every session's last table (inspection, tests).

use std::collections::HashMap;

use super::LifecycleEvent;
use crate::domain::{ParticipantId, SessionId};
use crate::forwarding::{self, ForwardingTable, Member, PublishedStream, SessionState, TableDiff};

/// Published streams and last tables. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Routing {
    /// Streams each participant publishes now, as reported by the media plane.
    published: HashMap<ParticipantId, Vec<PublishedStream>>,
    /// The last table published per session (only sessions with a route or a link).
    tables: HashMap<SessionId, ForwardingTable>,
}

impl Routing {
    /// Nothing published, no tables.
    pub fn new() -> Routing {
        Routing::default()
    }

    /// Records what `participant` publishes now (nothing: `streams` is empty) and returns the
    /// publish and unpublish events between what it published before and now.
    pub fn set_published(
        &mut self,
        participant: ParticipantId,
        streams: Vec<PublishedStream>,
    ) -> Vec<LifecycleEvent> {
        let old = if streams.is_empty() {
            self.published.remove(&participant)
        } else {
            self.published.insert(participant, streams.clone())
        }
        .unwrap_or_default();
        stream_events(participant, &old, &streams)
    }

    /// Forgets what a deleted participant published (no events: it is gone).
    pub fn forget_participant(&mut self, participant: ParticipantId) {
        self.published.remove(&participant);
    }

    /// What `participant` publishes now.
    pub fn published(&self, participant: ParticipantId) -> &[PublishedStream] {
        self.published.get(&participant).map_or(&[], Vec::as_slice)
    }

    /// The table of `session` compiled from `members` and what they publish, without keeping it.
    pub fn table(&self, session: SessionId, members: &[Member]) -> ForwardingTable {
        let state = SessionState {
            session: Some(session),
            members: members.to_vec(),
            streams: members
                .iter()
                .flat_map(|m| self.published(m.id))
                .cloned()
                .collect(),
        };
        forwarding::compile(&state)
    }

    /// Compiles `session` from `members`, keeps the table as the session's last one and
    /// returns the difference from the previous one; `None` when nothing changed.
    pub fn compile(&mut self, session: SessionId, members: &[Member]) -> Option<TableDiff> {
        let table = self.table(session, members);
        self.replace(session, table)
    }

    /// The session is gone: its last table goes, and the difference to the empty table
    /// (every route and link removed) is returned; `None` when it had none.
    pub fn forget(&mut self, session: SessionId) -> Option<TableDiff> {
        self.replace(session, ForwardingTable::default())
    }

    /// The last table of every session that has any route or link.
    pub fn tables_snapshot(&self) -> HashMap<SessionId, ForwardingTable> {
        self.tables.clone()
    }

    /// Whether a table is kept for the session (it has a route or a link).
    pub fn has_table(&self, session: SessionId) -> bool {
        self.tables.contains_key(&session)
    }

    fn replace(&mut self, session: SessionId, table: ForwardingTable) -> Option<TableDiff> {
        let old = self.tables.remove(&session).unwrap_or_default();
        let diff = old.diff(&table);
        if !table.links.is_empty() || !table.routes.is_empty() {
            self.tables.insert(session, table);
        }
        (!diff.is_empty()).then_some(diff)
    }
}

/// Publish and unpublish events between two lists of a participant's streams.
fn stream_events(
    participant: ParticipantId,
    old: &[PublishedStream],
    new: &[PublishedStream],
) -> Vec<LifecycleEvent> {
    let gone = old
        .iter()
        .filter(|o| !new.iter().any(|n| n.stream == o.stream));
    let came = new.iter().filter(|n| !old.contains(n));
    gone.map(|o| LifecycleEvent::StreamUnpublished {
        participant,
        stream: o.stream.clone(),
    })
    .chain(came.map(|n| LifecycleEvent::StreamPublished {
        participant,
        stream: n.stream.clone(),
        alias: n.alias.clone(),
        kinds: n.kinds,
    }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MediaKinds, PublishPermissions, StreamAlias, StreamId, Subscriptions};

    fn member(id: ParticipantId, session: SessionId) -> Member {
        Member {
            id,
            publish: PublishPermissions::ALL,
            subscriptions: Subscriptions::new(Some(session), vec![]).expect("whole session"),
        }
    }

    /// A session and two members that receive the whole session.
    fn two_members() -> (SessionId, ParticipantId, ParticipantId, [Member; 2]) {
        let (s, a, b) = (
            SessionId::random(),
            ParticipantId::random(),
            ParticipantId::random(),
        );
        (s, a, b, [member(a, s), member(b, s)])
    }

    fn stream(publisher: ParticipantId, name: &str) -> PublishedStream {
        PublishedStream {
            publisher,
            stream: StreamId::parse(name).expect("stream id"),
            alias: Some(StreamAlias::parse("cam").expect("alias")),
            kinds: MediaKinds::ALL,
        }
    }

    #[test]
    fn an_unchanged_compile_has_no_diff() {
        let (s, _, b, members) = two_members();
        let mut routing = Routing::new();
        routing.set_published(b, vec![stream(b, "ms-b")]);
        let first = routing.compile(s, &members).expect("a first table");
        assert_eq!(first.routes.upserted.len(), 1, "a receives b's stream");
        assert_eq!(routing.compile(s, &members), None);
        assert_eq!(routing.tables_snapshot()[&s], routing.table(s, &members));
    }

    #[test]
    fn unpublishing_removes_routes() {
        let (s, _, b, members) = two_members();
        let mut routing = Routing::new();
        routing.set_published(b, vec![stream(b, "ms-b")]);
        routing.compile(s, &members);
        routing.set_published(b, vec![]);
        let diff = routing.compile(s, &members).expect("the route goes");
        assert_eq!(diff.routes.removed.len(), 1);
        assert!(diff.routes.upserted.is_empty());
        assert!(routing.published(b).is_empty());
        assert!(routing.table(s, &members).routes.is_empty());
    }

    #[test]
    fn forgetting_a_session_removes_everything_once() {
        let (s, a, _, members) = two_members();
        let mut routing = Routing::new();
        routing.set_published(a, vec![stream(a, "ms-a")]);
        routing.compile(s, &members);
        let diff = routing.forget(s).expect("routes and links go");
        assert_eq!(diff.routes.removed.len(), 1);
        assert!(!diff.links.removed.is_empty());
        assert!(routing.tables_snapshot().is_empty());
        assert_eq!(routing.forget(s), None);
    }

    #[test]
    fn stream_changes_raise_publish_and_unpublish_events() {
        let p = ParticipantId::random();
        let mut routing = Routing::new();
        let events = routing.set_published(p, vec![stream(p, "one")]);
        assert_eq!(
            events,
            vec![LifecycleEvent::StreamPublished {
                participant: p,
                stream: StreamId::parse("one").expect("stream id"),
                alias: Some(StreamAlias::parse("cam").expect("alias")),
                kinds: MediaKinds::ALL,
            }]
        );
        assert!(routing.set_published(p, vec![stream(p, "one")]).is_empty());
        let events = routing.set_published(p, vec![stream(p, "two")]);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], LifecycleEvent::StreamUnpublished { stream, .. } if stream.as_str() == "one")
        );
        assert!(
            matches!(&events[1], LifecycleEvent::StreamPublished { stream, .. } if stream.as_str() == "two")
        );
        let events = routing.set_published(p, vec![]);
        assert!(matches!(
            &events[..],
            [LifecycleEvent::StreamUnpublished { .. }]
        ));
        routing.set_published(p, vec![stream(p, "three")]);
        routing.forget_participant(p);
        assert!(routing.published(p).is_empty());
    }
}
