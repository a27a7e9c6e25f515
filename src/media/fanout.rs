//! `Fanout`: who receives each incoming track. Owns track → source (where the publisher's
//! frames come from), track → the subscribers' targets, subscriber → its targets, the hot map
//! source → targets that every forwarded frame reads, and subscriber m-line → track (where a
//! subscriber's keyframe request goes upstream).
//!
//! It is updated, never rebuilt: a publisher's track appearing or going
//! ([`Fanout::set_source`]) or one subscriber's targets changing ([`Fanout::set_targets`])
//! rewrites only the entries of the tracks concerned. [`Fanout::check`] compares the hot map
//! with one rebuilt from scratch, and [`Fanout::check_against`] every subscriber's targets and
//! every track's source with what the engine rebuilds from the routes, the negotiations and
//! the publications (the tests call them after every step).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use str0m::media::Mid;

use super::keys::{PeerId, Source, Target, TrackKey};
use super::DeviceId;

#[derive(Default)]
pub(super) struct Fanout {
    hot: HashMap<Source, Vec<Target>>,
    sources: HashMap<TrackKey, Source>,
    wanted: HashMap<TrackKey, Vec<(DeviceId, Target)>>,
    by_subscriber: HashMap<DeviceId, BTreeMap<TrackKey, Target>>,
    upstream: HashMap<(PeerId, Mid), TrackKey>,
}

impl Fanout {
    /// The targets of a source's frames.
    pub(super) fn targets(&self, source: &Source) -> &[Target] {
        self.hot.get(source).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Where a track's frames come from now, if its publisher's device is here.
    pub(super) fn source_of(&self, key: &TrackKey) -> Option<Source> {
        self.sources.get(key).copied()
    }

    /// The m-lines of publish connection `peer` that feed a track now.
    pub(super) fn mids_of(&self, peer: PeerId) -> Vec<Mid> {
        self.sources
            .values()
            .filter_map(|s| match s {
                Source::Peer { peer: p, mid } if *p == peer => Some(*mid),
                _ => None,
            })
            .collect()
    }

    /// The source feeding a subscriber's m-line (where its keyframe requests go).
    pub(super) fn upstream(&self, peer: PeerId, mid: Mid) -> Option<Source> {
        self.sources.get(self.upstream.get(&(peer, mid))?).copied()
    }

    /// A publisher's track is now fed by `source`, or by nothing.
    pub(super) fn set_source(&mut self, key: &TrackKey, source: Option<Source>) {
        let old = match source {
            Some(s) => self.sources.insert(key.clone(), s),
            None => self.sources.remove(key),
        };
        if let Some(old) = old.filter(|o| Some(*o) != source) {
            self.hot.remove(&old);
        }
        self.sync(key);
    }

    /// `device` receives exactly `targets` from now on (by track); only the tracks whose
    /// target changed are touched.
    pub(super) fn set_targets(&mut self, device: DeviceId, targets: BTreeMap<TrackKey, Target>) {
        let old = if targets.is_empty() {
            self.by_subscriber.remove(&device).unwrap_or_default()
        } else {
            self.by_subscriber
                .insert(device, targets.clone())
                .unwrap_or_default()
        };
        let mut touched: BTreeSet<&TrackKey> = BTreeSet::new();
        for (key, target) in &old {
            if targets.get(key) != Some(target) {
                if let Some(list) = self.wanted.get_mut(key) {
                    list.retain(|(d, _)| *d != device);
                    if list.is_empty() {
                        self.wanted.remove(key);
                    }
                }
                if let Target::Peer { peer, mid } = target {
                    self.upstream.remove(&(*peer, *mid));
                }
                touched.insert(key);
            }
        }
        for (key, target) in &targets {
            if old.get(key) != Some(target) {
                self.wanted
                    .entry(key.clone())
                    .or_default()
                    .push((device, *target));
                if let Target::Peer { peer, mid } = target {
                    self.upstream.insert((*peer, *mid), key.clone());
                }
                touched.insert(key);
            }
        }
        for key in touched {
            self.sync(key);
        }
    }

    /// Rewrites the hot entry of one track's source.
    fn sync(&mut self, key: &TrackKey) {
        let Some(source) = self.sources.get(key) else {
            return;
        };
        match self.wanted.get(key) {
            Some(list) if !list.is_empty() => {
                let entry = self.hot.entry(*source).or_default();
                entry.clear();
                entry.extend(list.iter().map(|(_, t)| *t));
            }
            _ => {
                self.hot.remove(source);
            }
        }
    }

    /// Compares the hot map and the upstream map with ones rebuilt from the sources and the
    /// subscribers' targets.
    pub(super) fn check(&self) -> Result<(), String> {
        let mut rebuilt: BTreeMap<Source, BTreeSet<Target>> = BTreeMap::new();
        for targets in self.by_subscriber.values() {
            for (key, target) in targets {
                if let Some(source) = self.sources.get(key) {
                    rebuilt.entry(*source).or_default().insert(*target);
                }
            }
        }
        let hot: BTreeMap<Source, BTreeSet<Target>> = self
            .hot
            .iter()
            .map(|(s, t)| (*s, t.iter().copied().collect()))
            .collect();
        if hot != rebuilt {
            return Err(format!(
                "fan-out differs from a rebuild: {hot:?} != {rebuilt:?}"
            ));
        }
        let upstream: usize = self
            .by_subscriber
            .values()
            .flat_map(|t| t.values())
            .filter(|t| matches!(t, Target::Peer { .. }))
            .count();
        if upstream != self.upstream.len() {
            return Err(format!(
                "{} upstream entries for {upstream} browser targets",
                self.upstream.len()
            ));
        }
        Ok(())
    }

    /// [`Fanout::check`], then compares the fan-out with a rebuild from scratch: `targets`,
    /// each device's targets (every device of the engine, in turn), and `sources`, each
    /// published track's source.
    pub(super) fn check_against(
        &self,
        targets: &[(DeviceId, BTreeMap<TrackKey, Target>)],
        sources: &[(TrackKey, Option<Source>)],
    ) -> Result<(), String> {
        self.check()?;
        for (device, expected) in targets {
            let actual = self.by_subscriber.get(device).cloned().unwrap_or_default();
            if *expected != actual {
                return Err(format!(
                    "device {device:?}: targets {actual:?}, a rebuild gives {expected:?}"
                ));
            }
        }
        let devices: BTreeSet<DeviceId> = targets.iter().map(|(d, _)| *d).collect();
        if let Some(gone) = self.by_subscriber.keys().find(|d| !devices.contains(d)) {
            return Err(format!("targets kept for the departed device {gone:?}"));
        }
        let published = sources.len();
        if self.sources.len() != published {
            let sources: Vec<(&TrackKey, &Source)> = self.sources.iter().collect();
            return Err(format!(
                "{} sources for {published} published tracks: {sources:?}",
                sources.len()
            ));
        }
        for (key, expected) in sources {
            if self.source_of(key) != *expected {
                return Err(format!("track {key:?}: source is not {expected:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MediaKind, ParticipantId, StreamId};
    use crate::media::keys::SourceKey;

    fn key(p: ParticipantId, kind: MediaKind) -> TrackKey {
        TrackKey {
            publisher: p,
            stream: StreamId::parse("s").unwrap(),
            kind,
        }
    }

    #[test]
    fn updates_in_any_order_equal_a_rebuild() {
        let (a, b) = (ParticipantId::random(), ParticipantId::random());
        let ka = key(a, MediaKind::Audio);
        let kb = key(b, MediaKind::Video);
        let src_a = Source::Peer {
            peer: 1,
            mid: Mid::from("0"),
        };
        let mut f = Fanout::default();
        // Subscribers before publishers, and the other way round.
        let t1 = Target::Peer {
            peer: 10,
            mid: Mid::from("1"),
        };
        let t1b = Target::Peer {
            peer: 10,
            mid: Mid::from("2"),
        };
        f.set_targets(
            DeviceId(1),
            BTreeMap::from([(ka.clone(), t1), (kb.clone(), t1b)]),
        );
        assert!(f.targets(&src_a).is_empty());
        f.set_source(&ka, Some(src_a));
        assert_eq!(f.targets(&src_a), &[t1]);
        let t2 = Target::Local {
            device: DeviceId(2),
            source: SourceKey(7),
        };
        f.set_targets(DeviceId(2), BTreeMap::from([(ka.clone(), t2)]));
        assert_eq!(f.targets(&src_a).len(), 2);
        f.check().unwrap();
        // The publisher moves (new peer id): its old source has no targets any more.
        let src_a2 = Source::Peer {
            peer: 3,
            mid: Mid::from("0"),
        };
        f.set_source(&ka, Some(src_a2));
        assert!(f.targets(&src_a).is_empty());
        assert_eq!(f.targets(&src_a2).len(), 2);
        assert_eq!(f.upstream(10, Mid::from("1")), Some(src_a2));
        assert_eq!(f.upstream(10, Mid::from("2")), None, "kb has no source");
        f.set_targets(DeviceId(1), BTreeMap::new());
        assert_eq!(f.targets(&src_a2), &[t2]);
        f.set_source(&ka, None);
        assert!(f.targets(&src_a2).is_empty());
        f.check().unwrap();
    }
}
