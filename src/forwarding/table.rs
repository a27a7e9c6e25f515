//! `ForwardingTable`, its `diff` and the replay of a diff.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::domain::{MediaKinds, ParticipantId, StreamAlias, StreamId};

/// The compiled wiring of one session.
///
/// `links` say which publishers each subscriber is wired to (and by which rule), whether or not
/// those publishers currently publish anything; `routes` are the concrete streams to forward.
/// Both are keyed by stable identities (participant, stream), never by SSRC, and kept as
/// sorted vectors: compile emits entries in key order, and diffs are ordered merges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardingTable {
    /// Which publishers each subscriber is wired to, by (subscriber, publisher).
    pub links: SortedMap<LinkKey, Link>,
    /// The streams to forward, by (subscriber, publisher, stream).
    pub routes: SortedMap<RouteKey, Route>,
}

/// Identifies a link: ordered by subscriber, then publisher. The two are never equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkKey {
    /// The member receiving.
    pub subscriber: ParticipantId,
    /// The member whose streams it receives.
    pub publisher: ParticipantId,
}

/// A subscriber's standing wiring to one publisher, present even while that publisher
/// publishes nothing (so streams it starts later route without a rule change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The rule that made the link.
    pub cause: Cause,
    /// The alias filter of the rule (empty: all of the publisher's streams).
    pub stream_aliases: Vec<StreamAlias>,
}

/// Identifies a route: ordered by subscriber, then publisher, then stream, so one subscriber's
/// routes (and, within them, one publisher's) are contiguous.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteKey {
    /// The member receiving.
    pub subscriber: ParticipantId,
    /// The member publishing.
    pub publisher: ParticipantId,
    /// The publisher's stream (its msid).
    pub stream: StreamId,
}

/// One published stream forwarded to one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The publisher's alias for the stream, if it gave one.
    pub alias: Option<StreamAlias>,
    /// The kinds to forward: what the stream carries, within the publisher's permissions.
    pub kinds: MediaKinds,
    /// The rule that made the route (the same as its link's).
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
            .range_by(move |k| k.subscriber.cmp(&subscriber))
            .iter()
            .map(|(k, _)| k)
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
    /// Links added, changed or removed.
    pub links: MapDiff<LinkKey, Link>,
    /// Routes added, changed or removed.
    pub routes: MapDiff<RouteKey, Route>,
}

impl TableDiff {
    /// Whether the two tables were equal (nothing to send to the media plane).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.routes.is_empty()
    }

    /// Whether the change names `participant`, as subscriber or publisher (every route has
    /// its link: the links' changes name everyone whose wiring changed).
    pub fn names(&self, participant: ParticipantId) -> bool {
        let upserted = self.links.upserted.iter().map(|(k, _)| k);
        upserted
            .chain(self.links.removed.iter())
            .any(|k| k.subscriber == participant || k.publisher == participant)
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
    /// Entries new in the second map or whose value changed, with their new value.
    pub upserted: Vec<(K, V)>,
    /// Keys present in the first map and absent from the second.
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
    pub fn between(old: &SortedMap<K, V>, new: &SortedMap<K, V>) -> Self {
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

    /// Whether the two maps were equal.
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }

    /// Replays the diff: one ordered merge of the map, the removals and the upserts.
    pub fn apply(&self, map: &mut SortedMap<K, V>) {
        let old = std::mem::take(&mut map.0);
        let mut out = Vec::with_capacity(old.len() + self.upserted.len());
        let mut removed = self.removed.iter().peekable();
        let mut upserts = self.upserted.iter().peekable();
        for (k, v) in old {
            while removed.next_if(|r| **r < k).is_some() {}
            while let Some((uk, uv)) = upserts.next_if(|(uk, _)| *uk < k) {
                out.push((uk.clone(), uv.clone()));
            }
            if let Some((uk, uv)) = upserts.next_if(|(uk, _)| *uk == k) {
                out.push((uk.clone(), uv.clone()));
            } else if removed.next_if(|r| **r == k).is_none() {
                out.push((k, v));
            }
        }
        out.extend(upserts.map(|(k, v)| (k.clone(), v.clone())));
        map.0 = out;
    }
}

/// A map kept as a vector sorted by key (strictly increasing). Cheap to build in order, to
/// iterate and to merge; lookups are binary searches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortedMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    /// Sorts the entries, keeping the last value given for a key.
    pub fn from_unsorted(mut entries: Vec<(K, V)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(K, V)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        SortedMap(out)
    }

    /// Wraps entries already in strictly increasing key order.
    pub(crate) fn from_sorted(entries: Vec<(K, V)>) -> Self {
        debug_assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "keys not strictly increasing"
        );
        SortedMap(entries)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value for `key`, by binary search.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Whether `key` has an entry.
    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces, returning the previous value. O(n): for building tables by hand.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// The entries in increasing key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// The keys in increasing order.
    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    /// The values, in the increasing order of their keys.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.0.iter().map(|(_, v)| v)
    }

    /// The contiguous entries for which `position` says `Equal` (it must be monotonic:
    /// `Less` before the range, `Greater` after it).
    pub fn range_by(&self, position: impl Fn(&K) -> std::cmp::Ordering) -> &[(K, V)] {
        use std::cmp::Ordering::{Greater, Less};
        let start = self.0.partition_point(|(k, _)| position(k) == Less);
        let len = self.0[start..].partition_point(|(k, _)| position(k) != Greater);
        &self.0[start..start + len]
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SortedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        SortedMap::from_unsorted(iter.into_iter().collect())
    }
}

impl<'a, K, V> IntoIterator for &'a SortedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (K, V)>, fn(&'a (K, V)) -> (&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_diff_round_trips() {
        let old = SortedMap::from_unsorted(vec![(1, "a"), (2, "b"), (4, "d")]);
        let new = SortedMap::from_unsorted(vec![(2, "B"), (3, "c"), (4, "d")]);
        let d = MapDiff::between(&old, &new);
        assert_eq!(d.removed, vec![1]);
        assert_eq!(d.upserted, vec![(2, "B"), (3, "c")]);
        let mut replay = old.clone();
        d.apply(&mut replay);
        assert_eq!(replay, new);
        assert!(MapDiff::between(&new, &new).is_empty());
    }
}
