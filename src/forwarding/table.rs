//! `ForwardingTable`, its `diff` and the replay of a diff.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::domain::{MediaKinds, ParticipantId, StreamAlias, StreamId};

/// The compiled wiring of one session.
///
/// `links` say which publishers each subscriber is wired to (and by which rule), whether or not
/// those publishers currently publish anything; `routes` are the concrete streams to forward.
/// Both are keyed by stable identities (participant, stream), never by SSRC.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    pub links: BTreeMap<LinkKey, Link>,
    pub routes: BTreeMap<RouteKey, Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkKey {
    pub subscriber: ParticipantId,
    pub publisher: ParticipantId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub cause: Cause,
    /// The alias filter of the rule (empty: all of the publisher's streams).
    pub stream_aliases: Vec<StreamAlias>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    pub subscriber: ParticipantId,
    pub publisher: ParticipantId,
    pub stream: StreamId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub alias: Option<StreamAlias>,
    /// The kinds to forward: what the stream carries, within the publisher's permissions.
    pub kinds: MediaKinds,
    pub cause: Cause,
}

/// The subscription rule that put a link or route in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Cause {
    /// The subscriber subscribed to the whole session (`sessionId`, no participant list).
    Session,
    /// The subscriber listed the publisher, with no alias filter.
    Participant,
    /// The subscriber listed the publisher with `streamAliases`.
    StreamAlias,
}

impl ForwardingTable {
    /// The distinct publishers whose streams `subscriber` receives.
    pub fn publishers_of(
        &self,
        subscriber: ParticipantId,
    ) -> impl Iterator<Item = ParticipantId> + '_ {
        let mut last = None;
        self.routes
            .keys()
            .filter(move |k| k.subscriber == subscriber)
            .filter_map(move |k| {
                let new = last != Some(k.publisher);
                last = Some(k.publisher);
                new.then_some(k.publisher)
            })
    }

    /// The change that turns `self` into `new`.
    pub fn diff(&self, new: &ForwardingTable) -> TableDiff {
        TableDiff {
            links: MapDiff::between(&self.links, &new.links),
            routes: MapDiff::between(&self.routes, &new.routes),
        }
    }
}

/// The difference between two forwarding tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub links: MapDiff<LinkKey, Link>,
    pub routes: MapDiff<RouteKey, Route>,
}

impl TableDiff {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.routes.is_empty()
    }

    /// Replays this diff onto `table`. `old.apply(diff(old, new))` gives `new`.
    pub fn apply(&self, table: &mut ForwardingTable) {
        self.links.apply(&mut table.links);
        self.routes.apply(&mut table.routes);
    }

    /// Subscribers whose received streams change: the devices that must renegotiate.
    pub fn affected_subscribers(&self) -> BTreeSet<ParticipantId> {
        self.routes
            .upserted
            .iter()
            .map(|(k, _)| k.subscriber)
            .chain(self.routes.removed.iter().map(|k| k.subscriber))
            .collect()
    }
}

/// Entries to insert or replace, and keys to remove, both in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    pub upserted: Vec<(K, V)>,
    pub removed: Vec<K>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        MapDiff {
            upserted: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: PartialEq + Clone> MapDiff<K, V> {
    /// One ordered merge over both maps: O(n + m).
    pub fn between(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Self {
        use std::cmp::Ordering::*;
        let mut diff = MapDiff::default();
        let (mut a, mut b) = (old.iter().peekable(), new.iter().peekable());
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some((ka, _)), None) => {
                    diff.removed.push((*ka).clone());
                    a.next();
                }
                (None, Some((kb, vb))) => {
                    diff.upserted.push(((*kb).clone(), (*vb).clone()));
                    b.next();
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    Less => {
                        diff.removed.push((*ka).clone());
                        a.next();
                    }
                    Greater => {
                        diff.upserted.push(((*kb).clone(), (*vb).clone()));
                        b.next();
                    }
                    Equal => {
                        if va != vb {
                            diff.upserted.push(((*kb).clone(), (*vb).clone()));
                        }
                        a.next();
                        b.next();
                    }
                },
            }
        }
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    pub fn apply(&self, map: &mut BTreeMap<K, V>) {
        for k in &self.removed {
            map.remove(k);
        }
        for (k, v) in &self.upserted {
            map.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_diff_round_trips() {
        let old: BTreeMap<u32, &str> = [(1, "a"), (2, "b"), (4, "d")].into();
        let new: BTreeMap<u32, &str> = [(2, "B"), (3, "c"), (4, "d")].into();
        let d = MapDiff::between(&old, &new);
        assert_eq!(d.removed, vec![1]);
        assert_eq!(d.upserted, vec![(2, "B"), (3, "c")]);
        let mut replay = old.clone();
        d.apply(&mut replay);
        assert_eq!(replay, new);
        assert!(MapDiff::between(&new, &new).is_empty());
    }
}
