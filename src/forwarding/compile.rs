//! `compile`: session state in, forwarding table out.

use std::collections::BTreeMap;

use crate::domain::{
    MediaKinds, ParticipantId, PublishPermissions, SessionId, StreamAlias, StreamId,
    SubscriptionRule, Subscriptions,
};

use super::table::{Cause, ForwardingTable, Link, LinkKey, Route, RouteKey};

/// Everything the compiler needs to know about one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    pub session: Option<SessionId>,
    /// The members, unique by id (the store guarantees it), in any order.
    pub members: Vec<Member>,
    /// Streams currently published, in any order. Streams of non-members are ignored.
    pub streams: Vec<PublishedStream>,
}

/// A member of the session and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: ParticipantId,
    pub publish: PublishPermissions,
    pub subscriptions: Subscriptions,
}

/// A stream a member publishes (one MediaStream: an audio and/or a video track).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedStream {
    pub publisher: ParticipantId,
    pub stream: StreamId,
    pub alias: Option<StreamAlias>,
    /// The kinds the stream carries, before publish permissions are applied.
    pub kinds: MediaKinds,
}

/// Compiles a session's rules into its forwarding table. Pure and deterministic.
pub fn compile(state: &SessionState) -> ForwardingTable {
    let members: BTreeMap<ParticipantId, &Member> =
        state.members.iter().map(|m| (m.id, m)).collect();

    // Each member's routable streams, sorted by stream id; duplicates folded (union of kinds,
    // greatest alias) so that the result never depends on input order.
    let mut streams: BTreeMap<
        ParticipantId,
        BTreeMap<&StreamId, (Option<&StreamAlias>, MediaKinds)>,
    > = BTreeMap::new();
    for s in &state.streams {
        let Some(publisher) = members.get(&s.publisher) else {
            continue;
        };
        let kinds = s.kinds.intersect(publisher.publish);
        let entry = streams
            .entry(s.publisher)
            .or_default()
            .entry(&s.stream)
            .or_insert((None, MediaKinds::NONE));
        entry.0 = entry.0.max(s.alias.as_ref());
        entry.1 = MediaKinds::from_kinds(entry.1.iter().chain(kinds.iter()));
    }

    let mut links = Vec::new();
    let mut routes = Vec::new();
    for (&subscriber, member) in &members {
        let wanted: Vec<(ParticipantId, Cause, &[StreamAlias])> = match member.subscriptions.rule()
        {
            SubscriptionRule::Nothing => Vec::new(),
            SubscriptionRule::WholeSession(s) if Some(s) == state.session => members
                .keys()
                .filter(|&&p| p != subscriber)
                .map(|&p| (p, Cause::Session, &[][..]))
                .collect(),
            SubscriptionRule::WholeSession(_) => Vec::new(),
            SubscriptionRule::Participants(list) => list
                .iter()
                .filter(|ps| ps.participant != subscriber && members.contains_key(&ps.participant))
                .map(|ps| {
                    let cause = if ps.stream_aliases.is_empty() {
                        Cause::Participant
                    } else {
                        Cause::StreamAlias
                    };
                    (ps.participant, cause, ps.stream_aliases.as_slice())
                })
                .collect(),
        };
        for (publisher, cause, aliases) in wanted {
            links.push((
                LinkKey {
                    subscriber,
                    publisher,
                },
                Link {
                    cause,
                    stream_aliases: aliases.to_vec(),
                },
            ));
            let Some(published) = streams.get(&publisher) else {
                continue;
            };
            for (&stream, &(alias, kinds)) in published {
                let alias_ok = aliases.is_empty() || alias.is_some_and(|a| aliases.contains(a));
                if !alias_ok || kinds.is_empty() {
                    continue;
                }
                routes.push((
                    RouteKey {
                        subscriber,
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
        links: links.into_iter().collect(),
        routes: routes.into_iter().collect(),
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
