//! `HostedRoutes`: the forwarding tables of the sessions given to this engine (applied as
//! diffs), and participant → session for every subscriber or publisher they mention. It
//! answers "which tracks should this participant receive" and "who receives this publisher".

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::keys::TrackKey;
use crate::domain::{ParticipantId, SessionId, StreamAlias};
use crate::forwarding::{ForwardingTable, TableDiff};

#[derive(Default)]
pub(super) struct HostedRoutes {
    tables: HashMap<SessionId, ForwardingTable>,
    session_of: HashMap<ParticipantId, SessionId>,
}

impl HostedRoutes {
    /// Applies a change of `session`'s table; returns the subscribers whose routes or links
    /// may have changed.
    pub(super) fn apply(
        &mut self,
        session: SessionId,
        diff: &TableDiff,
    ) -> BTreeSet<ParticipantId> {
        let table = self.tables.entry(session).or_default();
        diff.apply(table);
        let mut affected: BTreeSet<ParticipantId> = diff.affected_subscribers();
        affected.extend(diff.links.upserted.iter().map(|(k, _)| k.subscriber));
        affected.extend(diff.links.removed.iter().map(|k| k.subscriber));
        // Publishers are members too: they must be found in this session (a device move, a
        // renegotiation of their subscribers).
        let mut mentioned = affected.clone();
        mentioned.extend(diff.links.upserted.iter().map(|(k, _)| k.publisher));
        mentioned.extend(diff.links.removed.iter().map(|k| k.publisher));
        for participant in &mentioned {
            let present = !table
                .links
                .range_by(|k| k.subscriber.cmp(participant))
                .is_empty()
                || !table
                    .routes
                    .range_by(|k| k.subscriber.cmp(participant))
                    .is_empty()
                || table.links.iter().any(|(k, _)| k.publisher == *participant);
            if present {
                self.session_of.insert(*participant, session);
            } else if self.session_of.get(participant) == Some(&session) {
                self.session_of.remove(participant);
            }
        }
        if table.links.is_empty() && table.routes.is_empty() {
            self.tables.remove(&session);
        }
        affected
    }

    /// The tables held, by session.
    pub(super) fn tables(&self) -> &HashMap<SessionId, ForwardingTable> {
        &self.tables
    }

    /// What brings the tables held to `tables` (sessions absent from it lose their routes): a
    /// diff for each session that differs, in session order.
    pub(super) fn diffs_to(
        &self,
        tables: &HashMap<SessionId, ForwardingTable>,
    ) -> Vec<(SessionId, TableDiff)> {
        let mut sessions: Vec<SessionId> =
            self.tables.keys().chain(tables.keys()).copied().collect();
        sessions.sort();
        sessions.dedup();
        let empty = ForwardingTable::default();
        sessions
            .into_iter()
            .filter_map(|session| {
                let current = self.tables.get(&session).unwrap_or(&empty);
                let wanted = tables.get(&session).unwrap_or(&empty);
                let diff = current.diff(wanted);
                (!diff.is_empty()).then_some((session, diff))
            })
            .collect()
    }

    /// The session whose table mentions `participant`.
    pub(super) fn session_of(&self, participant: ParticipantId) -> Option<SessionId> {
        self.session_of.get(&participant).copied()
    }

    /// The participants `session`'s table mentions, as subscriber or publisher.
    pub(super) fn participants_in(&self, session: SessionId) -> BTreeSet<ParticipantId> {
        let Some(table) = self.tables.get(&session) else {
            return BTreeSet::new();
        };
        table
            .links
            .iter()
            .flat_map(|(k, _)| [k.subscriber, k.publisher])
            .collect()
    }

    /// The tracks `participant` should receive now: exactly its routes, in the kinds each
    /// route carries, with the alias the subscriber sees.
    pub(super) fn desired_tracks(
        &self,
        participant: ParticipantId,
    ) -> BTreeMap<TrackKey, Option<StreamAlias>> {
        let mut out = BTreeMap::new();
        let Some(table) = self
            .session_of
            .get(&participant)
            .and_then(|s| self.tables.get(s))
        else {
            return out;
        };
        for (key, route) in table.routes.range_by(|k| k.subscriber.cmp(&participant)) {
            for kind in route.kinds.iter() {
                out.insert(
                    TrackKey {
                        publisher: key.publisher,
                        stream: key.stream.clone(),
                        kind,
                    },
                    route.alias.clone(),
                );
            }
        }
        out
    }

    /// The subscribers routed from `publisher`'s streams.
    pub(super) fn subscribers_of(&self, publisher: ParticipantId) -> Vec<ParticipantId> {
        let Some(table) = self
            .session_of
            .get(&publisher)
            .and_then(|s| self.tables.get(s))
        else {
            return Vec::new();
        };
        let mut subscribers: Vec<ParticipantId> = table
            .routes
            .iter()
            .filter(|(k, _)| k.publisher == publisher)
            .map(|(k, _)| k.subscriber)
            .collect();
        subscribers.dedup();
        subscribers
    }
}
