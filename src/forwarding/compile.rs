//! `compile`: session state in, forwarding table out.

use crate::domain::{
    MediaKinds, ParticipantId, PublishPermissions, SessionId, StreamAlias, StreamId,
    SubscriptionRule, Subscriptions,
};

use super::table::{Cause, ForwardingTable, Link, LinkKey, Route, RouteKey, SortedMap};

/// Everything the compiler needs to know about one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The session compiled; a whole-session subscription routes only if it names this id
    /// (`None`: no whole-session subscription routes).
    pub session: Option<SessionId>,
    /// The members, unique by id (the store guarantees it), in any order.
    pub members: Vec<Member>,
    /// Streams currently published, in any order. Streams of non-members are ignored.
    pub streams: Vec<PublishedStream>,
}

/// A member of the session and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The participant; unique among the members.
    pub id: ParticipantId,
    /// The kinds it may publish; its streams are cut down to these before routing.
    pub publish: PublishPermissions,
    /// Its subscription rules as the backend set them.
    pub subscriptions: Subscriptions,
}

/// A stream a member publishes (one MediaStream: an audio and/or a video track).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedStream {
    /// The participant publishing it; ignored unless a member of the session.
    pub publisher: ParticipantId,
    /// The stream's msid, unique per publisher.
    pub stream: StreamId,
    /// The publisher's label for it, if any; alias filters match against it.
    pub alias: Option<StreamAlias>,
    /// The kinds the stream carries, before publish permissions are applied.
    pub kinds: MediaKinds,
}

/// Compiles a session's rules into its forwarding table. Pure and deterministic.
///
/// Emits links and routes directly in key order (subscriber, publisher, stream), so the table
/// is built without sorting or per-entry allocation beyond the two output vectors.
pub fn compile(state: &SessionState) -> ForwardingTable {
    let mut members: Vec<&Member> = state.members.iter().collect();
    members.sort_unstable_by_key(|m| m.id);
    let member = |id: ParticipantId| {
        members
            .binary_search_by_key(&id, |m| m.id)
            .ok()
            .map(|i| members[i])
    };

    // Routable streams of members, sorted by (publisher, stream); duplicates folded (union of
    // kinds, greatest alias) so that the result never depends on input order.
    let mut streams: Vec<(ParticipantId, &StreamId, Option<&StreamAlias>, MediaKinds)> = state
        .streams
        .iter()
        .filter_map(|s| {
            let publisher = member(s.publisher)?;
            Some((
                s.publisher,
                &s.stream,
                s.alias.as_ref(),
                s.kinds.intersect(publisher.publish),
            ))
        })
        .collect();
    streams.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    streams.dedup_by(|later, kept| {
        let same = (later.0, later.1) == (kept.0, kept.1);
        if same {
            kept.2 = kept.2.max(later.2);
            kept.3 = MediaKinds::from_kinds(kept.3.iter().chain(later.3.iter()));
        }
        same
    });
    let streams_of = |publisher: ParticipantId| {
        let start = streams.partition_point(|s| s.0 < publisher);
        let len = streams[start..].partition_point(|s| s.0 == publisher);
        &streams[start..start + len]
    };

    let mut links = Vec::with_capacity(members.len() * members.len().saturating_sub(1));
    let mut routes = Vec::with_capacity(links.capacity() * 2);
    let mut listed: Vec<(ParticipantId, Cause, &[StreamAlias])> = Vec::new();
    for subscriber in &members {
        listed.clear();
        match subscriber.subscriptions.rule() {
            SubscriptionRule::Nothing => {}
            SubscriptionRule::WholeSession(s) if Some(s) == state.session => listed.extend(
                members
                    .iter()
                    .filter(|p| p.id != subscriber.id)
                    .map(|p| (p.id, Cause::Session, &[][..])),
            ),
            SubscriptionRule::WholeSession(_) => {}
            SubscriptionRule::Participants(list) => {
                listed.extend(
                    list.iter()
                        .filter(|ps| {
                            ps.participant != subscriber.id && member(ps.participant).is_some()
                        })
                        .map(|ps| {
                            let cause = if ps.stream_aliases.is_empty() {
                                Cause::Participant
                            } else {
                                Cause::StreamAlias
                            };
                            (ps.participant, cause, ps.stream_aliases.as_slice())
                        }),
                );
                listed.sort_by_key(|l| l.0);
                listed.dedup_by_key(|l| l.0);
            }
        }
        for &(publisher, cause, aliases) in &listed {
            links.push((
                LinkKey {
                    subscriber: subscriber.id,
                    publisher,
                },
                Link {
                    cause,
                    stream_aliases: aliases.to_vec(),
                },
            ));
            for &(_, stream, alias, kinds) in streams_of(publisher) {
                let alias_ok = aliases.is_empty() || alias.is_some_and(|a| aliases.contains(a));
                if !alias_ok || kinds.is_empty() {
                    continue;
                }
                routes.push((
                    RouteKey {
                        subscriber: subscriber.id,
                        publisher,
                        stream: stream.clone(),
                    },
                    Route {
                        alias: alias.cloned(),
                        kinds,
                        cause,
                    },
                ));
            }
        }
    }
    ForwardingTable {
        links: SortedMap::from_sorted(links),
        routes: SortedMap::from_sorted(routes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ParticipantSubscription;

    fn member(id: ParticipantId, subs: Subscriptions) -> Member {
        Member {
            id,
            publish: MediaKinds::ALL,
            subscriptions: subs,
        }
    }

    fn stream(p: ParticipantId, id: &str, alias: Option<&str>) -> PublishedStream {
        PublishedStream {
            publisher: p,
            stream: StreamId::parse(id).unwrap(),
            alias: alias.map(|a| StreamAlias::parse(a).unwrap()),
            kinds: MediaKinds::ALL,
        }
    }

    fn only(p: ParticipantId, aliases: &[&str]) -> ParticipantSubscription {
        ParticipantSubscription {
            participant: p,
            stream_aliases: aliases
                .iter()
                .map(|a| StreamAlias::parse(a).unwrap())
                .collect(),
        }
    }

    #[test]
    fn whisper_caller_never_hears_supervisor() {
        let s = SessionId::random();
        let (caller, agent, sup) = (
            ParticipantId::random(),
            ParticipantId::random(),
            ParticipantId::random(),
        );
        let state = SessionState {
            session: Some(s),
            members: vec![
                member(
                    caller,
                    Subscriptions::new(None, vec![only(agent, &[])]).unwrap(),
                ),
                member(agent, Subscriptions::new(Some(s), vec![]).unwrap()),
                member(sup, Subscriptions::new(Some(s), vec![]).unwrap()),
            ],
            streams: vec![
                stream(caller, "c", None),
                stream(agent, "a", None),
                stream(sup, "s", None),
            ],
        };
        let t = compile(&state);
        let received = |sub| t.publishers_of(sub).collect::<Vec<_>>();
        assert_eq!(received(caller), vec![agent]);
        let mut agent_hears = received(agent);
        agent_hears.sort();
        let mut expect = vec![caller, sup];
        expect.sort();
        assert_eq!(agent_hears, expect);
        assert_eq!(t.routes.len(), 1 + 2 + 2);
    }

    #[test]
    fn alias_filter_and_permissions() {
        let s = SessionId::random();
        let (a, b) = (ParticipantId::random(), ParticipantId::random());
        let mut pb = member(b, Subscriptions::default());
        pb.publish = MediaKinds::AUDIO;
        let state = SessionState {
            session: Some(s),
            members: vec![
                member(
                    a,
                    Subscriptions::new(None, vec![only(b, &["cam"])]).unwrap(),
                ),
                pb,
            ],
            streams: vec![
                stream(b, "s1", Some("cam")),
                stream(b, "s2", Some("screen")),
                stream(b, "s3", None),
            ],
        };
        let t = compile(&state);
        assert_eq!(t.routes.len(), 1);
        let (k, r) = t.routes.iter().next().unwrap();
        assert_eq!(k.stream.as_str(), "s1");
        assert_eq!(r.kinds, MediaKinds::AUDIO);
        assert_eq!(r.cause, Cause::StreamAlias);
    }
}
