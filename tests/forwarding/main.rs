//! Property tests for the forwarding compiler (`patchbay::forwarding`).
//!
//! `compile` is checked against an independent reference model of the rules (the module doc of
//! `src/forwarding/mod.rs`, reference §1.6 and §10), written as plain nested loops over members
//! and streams, and against properties that each state one rule on its own, so that a bug shared
//! by the compiler and the model is still caught. `diff`/`apply`/`affected_subscribers` are
//! checked on pairs of related states (members joining and leaving, rules and streams changing).
//!
//! Run with `cargo test --test forwarding`. Failing cases are shrunk and printed; they are not
//! persisted to disk.

use std::collections::{BTreeMap, BTreeSet};

use patchbay::domain::{
    MediaKinds, ParticipantId, ParticipantSubscription, SessionId, StreamAlias, StreamId,
    Subscriptions,
};
use patchbay::forwarding::{
    compile, Cause, ForwardingTable, Link, LinkKey, Member, PublishedStream, Route, RouteKey,
    SessionState,
};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

// ------------------------------------------------------------------------------------------------
// Generators
// ------------------------------------------------------------------------------------------------

/// The aliases publishers give their streams.
const STREAM_ALIASES: [&str; 3] = ["cam", "screen", "phone"];
/// The aliases subscription filters name: the published ones and one nobody publishes.
const FILTER_ALIASES: [&str; 4] = ["cam", "screen", "phone", "absent"];
/// Stream ids (msids). Unique per publisher, but shared between publishers on purpose, so that
/// routes must be keyed by publisher and stream, not by stream alone.
const STREAM_IDS: [&str; 5] = ["s0", "s1", "s2", "s3", "s4"];

fn pid(n: u32) -> ParticipantId {
    ParticipantId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).unwrap()
}

fn sid(n: u32) -> SessionId {
    SessionId::parse(&format!("5e5510e0-0000-4000-8000-{n:012x}")).unwrap()
}

/// The session under test.
fn this_session() -> SessionId {
    sid(1)
}

/// Another session, named by stale or mistaken rules.
fn other_session() -> SessionId {
    sid(2)
}

fn alias(s: &str) -> StreamAlias {
    StreamAlias::parse(s).unwrap()
}

fn kinds(mask: u8) -> MediaKinds {
    MediaKinds {
        audio: mask & 1 != 0,
        video: mask & 2 != 0,
    }
}

#[derive(Debug, Clone)]
struct StreamSpec {
    id: usize,
    alias: Option<usize>,
    kinds: u8,
}

#[derive(Debug, Clone)]
enum SubSpec {
    /// Neither `sessionId` nor participants.
    Nothing,
    /// `sessionId` alone: this session (true) or another one (false).
    Session(bool),
    /// A non-empty participant list: entries pick from every id in play (members, the subscriber
    /// itself, non-members), each with an alias filter (bit mask over `FILTER_ALIASES`, 0 = no
    /// filter); plus an optional `sessionId` (this session or another) that the list overrides.
    List {
        session: Option<bool>,
        entries: Vec<(Index, u8)>,
    },
}

#[derive(Debug, Clone)]
struct MemberSpec {
    publish: u8,
    subs: SubSpec,
    streams: Vec<StreamSpec>,
}

#[derive(Debug, Clone)]
struct StateSpec {
    /// Whether the state names its session (`SessionState::session`).
    has_session: bool,
    /// Members by raw id; repeated ids are dropped (members are unique by id).
    members: Vec<(u32, MemberSpec)>,
    /// Non-members: they may publish and may be named by subscriptions, but must never route.
    outsiders: Vec<(u32, Vec<StreamSpec>)>,
    /// More ids subscriptions may name (members of a related state), beyond members and outsiders.
    also_named: Vec<u32>,
}

fn stream_spec() -> impl Strategy<Value = StreamSpec> {
    (
        0..STREAM_IDS.len(),
        prop::option::weighted(0.7, 0..STREAM_ALIASES.len()),
        prop_oneof![1 => Just(0u8), 8 => 1u8..4],
    )
        .prop_map(|(id, alias, kinds)| StreamSpec { id, alias, kinds })
}

fn filter_mask() -> impl Strategy<Value = u8> {
    prop_oneof![2 => Just(0u8), 3 => 1u8..(1 << FILTER_ALIASES.len())]
}

fn sub_spec() -> impl Strategy<Value = SubSpec> {
    prop_oneof![
        1 => Just(SubSpec::Nothing),
        3 => prop_oneof![5 => Just(true), 1 => Just(false)].prop_map(SubSpec::Session),
        3 => (
            prop::option::of(any::<bool>()),
            prop::collection::vec((any::<Index>(), filter_mask()), 1..6),
        )
            .prop_map(|(session, entries)| SubSpec::List { session, entries }),
    ]
}

fn member_spec() -> impl Strategy<Value = MemberSpec> {
    (
        prop_oneof![1 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8), 4 => Just(3u8)],
        sub_spec(),
        prop::collection::vec(stream_spec(), 0..=3),
    )
        .prop_map(|(publish, subs, streams)| MemberSpec {
            publish,
            subs,
            streams,
        })
}

fn state_spec() -> impl Strategy<Value = StateSpec> {
    (
        prop::bool::weighted(0.9),
        prop::collection::vec((100u32..10_000, member_spec()), 0..=20),
        prop::collection::vec(
            (
                10_000u32..20_000,
                prop::collection::vec(stream_spec(), 0..=2),
            ),
            0..=3,
        ),
    )
        .prop_map(|(has_session, members, outsiders)| StateSpec {
            has_session,
            members,
            outsiders,
            also_named: Vec::new(),
        })
}

/// Builds the subscriptions a spec describes, for a subscriber among `pool` (all ids in play).
fn subscriptions(spec: &SubSpec, pool: &[ParticipantId]) -> Subscriptions {
    let session = |ours: bool| {
        if ours {
            this_session()
        } else {
            other_session()
        }
    };
    match spec {
        SubSpec::Nothing => Subscriptions::new(None, vec![]).unwrap(),
        SubSpec::Session(ours) => Subscriptions::new(Some(session(*ours)), vec![]).unwrap(),
        SubSpec::List {
            session: s,
            entries,
        } => {
            let mut seen = BTreeSet::new();
            let list = entries
                .iter()
                .map(|(i, mask)| (pool[i.index(pool.len())], mask))
                .filter(|(p, _)| seen.insert(*p))
                .map(|(participant, mask)| ParticipantSubscription {
                    participant,
                    stream_aliases: FILTER_ALIASES
                        .iter()
                        .enumerate()
                        .filter(|(bit, _)| mask & (1 << bit) != 0)
                        .map(|(_, a)| alias(a))
                        .collect(),
                })
                .collect();
            Subscriptions::new(s.map(session), list).unwrap()
        }
    }
}

fn push_streams(
    out: &mut Vec<PublishedStream>,
    publisher: ParticipantId,
    specs: &[StreamSpec],
    unique: bool,
) {
    let mut seen = BTreeSet::new();
    for s in specs {
        if unique && !seen.insert(s.id) {
            continue;
        }
        out.push(PublishedStream {
            publisher,
            stream: StreamId::parse(STREAM_IDS[s.id]).unwrap(),
            alias: s.alias.map(|a| alias(STREAM_ALIASES[a])),
            kinds: kinds(s.kinds),
        });
    }
}

/// Turns a spec into a state. With `unique_streams`, a publisher never publishes two streams
/// with the same id (what a well-behaved device does); without, it may.
fn build(spec: &StateSpec, unique_streams: bool) -> SessionState {
    let mut seen = BTreeSet::new();
    let members: Vec<(ParticipantId, &MemberSpec)> = spec
        .members
        .iter()
        .filter(|(n, _)| seen.insert(*n))
        .map(|(n, m)| (pid(*n), m))
        .collect();
    let outsiders: Vec<(ParticipantId, &[StreamSpec])> = spec
        .outsiders
        .iter()
        .filter(|(n, _)| seen.insert(*n))
        .map(|(n, s)| (pid(*n), s.as_slice()))
        .collect();
    // Everyone a subscription may name, in a fixed order (so that related states agree).
    let pool: Vec<ParticipantId> = members
        .iter()
        .map(|(p, _)| *p)
        .chain(outsiders.iter().map(|(p, _)| *p))
        .chain(spec.also_named.iter().map(|n| pid(*n)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut streams = Vec::new();
    for (p, m) in &members {
        push_streams(&mut streams, *p, &m.streams, unique_streams);
    }
    for (p, s) in &outsiders {
        push_streams(&mut streams, *p, s, unique_streams);
    }
    SessionState {
        session: spec.has_session.then(this_session),
        members: members
            .iter()
            .map(|(id, m)| Member {
                id: *id,
                publish: kinds(m.publish),
                subscriptions: subscriptions(&m.subs, &pool),
            })
            .collect(),
        streams,
    }
}

fn state() -> impl Strategy<Value = SessionState> {
    state_spec().prop_map(|s| build(&s, true))
}

/// A state and the same state with its members and streams in another order.
fn shuffled_pair(unique_streams: bool) -> impl Strategy<Value = (SessionState, SessionState)> {
    state_spec()
        .prop_map(move |s| build(&s, unique_streams))
        .prop_flat_map(|s| {
            (
                Just(s.clone()),
                Just(s.members).prop_shuffle(),
                Just(s.streams).prop_shuffle(),
            )
        })
        .prop_map(|(s, members, streams)| {
            let shuffled = SessionState {
                session: s.session,
                members,
                streams,
            };
            (s, shuffled)
        })
}

/// How a member slot differs between the two states of a pair.
#[derive(Debug, Clone, Copy)]
enum Change {
    Same,
    NewRules,
    NewStreams,
    NewPermissions,
    Leaves,
    Joins,
}

/// Two related states of one session: members join and leave, change their rules, streams and
/// permissions, the rest stays put, like consecutive versions of a real session. Both states
/// share the pool of ids that subscriptions pick from, so unchanged rules name the same people.
fn related_pair() -> impl Strategy<Value = (SessionState, SessionState)> {
    let change = prop_oneof![
        8 => Just(Change::Same),
        1 => Just(Change::NewRules),
        1 => Just(Change::NewStreams),
        1 => Just(Change::NewPermissions),
        1 => Just(Change::Leaves),
        1 => Just(Change::Joins),
    ];
    (
        state_spec(),
        prop::collection::vec((change, member_spec()), 20),
    )
        .prop_map(|(spec, changes)| {
            let everyone: Vec<u32> = spec.members.iter().map(|(n, _)| *n).collect();
            let mut before = StateSpec {
                members: Vec::new(),
                also_named: everyone,
                ..spec.clone()
            };
            let mut after = before.clone();
            for ((n, m), (change, alt)) in spec.members.iter().zip(changes) {
                let changed = match change {
                    Change::Same | Change::Leaves | Change::Joins => m.clone(),
                    Change::NewRules => MemberSpec {
                        subs: alt.subs,
                        ..m.clone()
                    },
                    Change::NewStreams => MemberSpec {
                        streams: alt.streams,
                        ..m.clone()
                    },
                    Change::NewPermissions => MemberSpec {
                        publish: alt.publish,
                        ..m.clone()
                    },
                };
                if !matches!(change, Change::Joins) {
                    before.members.push((*n, m.clone()));
                }
                if !matches!(change, Change::Leaves) {
                    after.members.push((*n, changed));
                }
            }
            (build(&before, true), build(&after, true))
        })
}

/// A whisper call (reference §1.6): the caller subscribes to the agent only, the agent and the
/// supervisor to the whole session; every one of the three publishes at least one stream with
/// media it may send. Up to 17 other members with random rules and streams share the session.
fn whisper() -> impl Strategy<Value = (SessionState, [ParticipantId; 3])> {
    let routable = prop::collection::vec(
        (
            0..STREAM_IDS.len(),
            prop::option::of(0..STREAM_ALIASES.len()),
            1u8..4,
        )
            .prop_map(|(id, alias, kinds)| StreamSpec { id, alias, kinds }),
        1..=2,
    );
    (
        state_spec(),
        any::<bool>(),
        routable.clone(),
        routable.clone(),
        routable,
        any::<Index>(),
    )
        .prop_map(|(mut others, caller_has_session, c, a, s, at)| {
            let [caller, agent, supervisor] = [pid(1), pid(2), pid(3)];
            others.members.truncate(17);
            others.also_named = vec![1, 2, 3];
            let mut state = build(&others, true);
            state.session = Some(this_session());
            let whole = || Subscriptions::new(Some(this_session()), vec![]).unwrap();
            let caller_rules = Subscriptions::new(
                caller_has_session.then(this_session),
                vec![ParticipantSubscription {
                    participant: agent,
                    stream_aliases: vec![],
                }],
            )
            .unwrap();
            let three = [
                (caller, caller_rules, c),
                (agent, whole(), a),
                (supervisor, whole(), s),
            ];
            for (id, subscriptions, streams) in three {
                let i = at.index(state.members.len() + 1);
                state.members.insert(
                    i,
                    Member {
                        id,
                        publish: MediaKinds::ALL,
                        subscriptions,
                    },
                );
                push_streams(&mut state.streams, id, &streams, true);
            }
            (state, [caller, agent, supervisor])
        })
}

// ------------------------------------------------------------------------------------------------
// The reference model
// ------------------------------------------------------------------------------------------------

/// The rules, written out as plainly as possible, independently of `compile`.
fn reference(state: &SessionState) -> ForwardingTable {
    let is_member = |p: ParticipantId| state.members.iter().any(|m| m.id == p);
    let mut table = ForwardingTable::default();
    for subscriber in &state.members {
        let rules = &subscriber.subscriptions;
        // (publisher, cause, alias filter) for every publisher this subscriber is wired to.
        let mut wanted: Vec<(ParticipantId, Cause, Vec<StreamAlias>)> = Vec::new();
        if !rules.participants.is_empty() {
            // A non-empty list overrides `sessionId`, names only members, never oneself.
            for entry in &rules.participants {
                if entry.participant == subscriber.id || !is_member(entry.participant) {
                    continue;
                }
                let cause = if entry.stream_aliases.is_empty() {
                    Cause::Participant
                } else {
                    Cause::StreamAlias
                };
                wanted.push((entry.participant, cause, entry.stream_aliases.clone()));
            }
        } else if rules.session_id.is_some() && rules.session_id == state.session {
            // The whole session: every other member.
            for publisher in &state.members {
                if publisher.id != subscriber.id {
                    wanted.push((publisher.id, Cause::Session, Vec::new()));
                }
            }
        }
        for (publisher, cause, filter) in wanted {
            let link = Link {
                cause,
                stream_aliases: filter.clone(),
            };
            let key = LinkKey {
                subscriber: subscriber.id,
                publisher,
            };
            assert!(table.links.insert(key, link).is_none());
            let permitted = state
                .members
                .iter()
                .find(|m| m.id == publisher)
                .unwrap()
                .publish;
            for stream in &state.streams {
                if stream.publisher != publisher {
                    continue;
                }
                let alias_ok = filter.is_empty()
                    || match &stream.alias {
                        Some(a) => filter.contains(a),
                        None => false,
                    };
                let kinds = MediaKinds {
                    audio: stream.kinds.audio && permitted.audio,
                    video: stream.kinds.video && permitted.video,
                };
                if !alias_ok || (!kinds.audio && !kinds.video) {
                    continue;
                }
                let key = RouteKey {
                    subscriber: subscriber.id,
                    publisher,
                    stream: stream.stream.clone(),
                };
                let route = Route {
                    alias: stream.alias.clone(),
                    kinds,
                    cause,
                };
                assert!(
                    table.routes.insert(key, route).is_none(),
                    "the model expects stream ids unique per publisher"
                );
            }
        }
    }
    table
}

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn member_of(state: &SessionState, id: ParticipantId) -> Option<&Member> {
    state.members.iter().find(|m| m.id == id)
}

fn stream_of<'a>(
    state: &'a SessionState,
    publisher: ParticipantId,
    stream: &StreamId,
) -> Option<&'a PublishedStream> {
    state
        .streams
        .iter()
        .find(|s| s.publisher == publisher && &s.stream == stream)
}

fn subset(small: MediaKinds, big: MediaKinds) -> bool {
    (!small.audio || big.audio) && (!small.video || big.video)
}

/// The distinct publishers `subscriber` receives a route from, computed from the routes.
fn received(table: &ForwardingTable, subscriber: ParticipantId) -> BTreeSet<ParticipantId> {
    table
        .routes
        .keys()
        .filter(|k| k.subscriber == subscriber)
        .map(|k| k.publisher)
        .collect()
}

/// `subscriber`'s routes, keys and values.
fn routes_of(table: &ForwardingTable, subscriber: ParticipantId) -> Vec<(&RouteKey, &Route)> {
    table
        .routes
        .iter()
        .filter(|(k, _)| k.subscriber == subscriber)
        .collect()
}

/// Whether a publisher has a stream that can route (carries some media it may publish).
fn publishes_something(state: &SessionState, publisher: ParticipantId) -> bool {
    let Some(m) = member_of(state, publisher) else {
        return false;
    };
    state
        .streams
        .iter()
        .any(|s| s.publisher == publisher && !s.kinds.intersect(m.publish).is_empty())
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Checks one side of a diff: sorted, minimal, and exactly the change from `old` to `new`.
fn check_map_diff<K, V>(
    diff: &patchbay::forwarding::MapDiff<K, V>,
    old: &patchbay::forwarding::SortedMap<K, V>,
    new: &patchbay::forwarding::SortedMap<K, V>,
) -> Result<(), TestCaseError>
where
    K: Ord + Clone + std::fmt::Debug,
    V: PartialEq + Clone + std::fmt::Debug,
{
    for w in diff.upserted.windows(2) {
        prop_assert!(w[0].0 < w[1].0, "upserts not in key order: {:?}", w);
    }
    for w in diff.removed.windows(2) {
        prop_assert!(w[0] < w[1], "removals not in key order: {:?}", w);
    }
    for (k, v) in &diff.upserted {
        prop_assert_eq!(
            new.get(k),
            Some(v),
            "upsert of {:?} is not in the new map",
            k
        );
        prop_assert_ne!(old.get(k), Some(v), "upsert of {:?} changes nothing", k);
    }
    for k in &diff.removed {
        prop_assert!(old.contains_key(k), "removal of {:?}, absent before", k);
        prop_assert!(!new.contains_key(k), "removal of {:?}, present after", k);
    }
    // Complete: every entry that differs is in the diff.
    let upserted: BTreeSet<&K> = diff.upserted.iter().map(|(k, _)| k).collect();
    let removed: BTreeSet<&K> = diff.removed.iter().collect();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            prop_assert!(upserted.contains(k), "missing upsert of {:?}", k);
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            prop_assert!(removed.contains(k), "missing removal of {:?}", k);
        }
    }
    Ok(())
}

/// Every diff property, for tables `a` and `b`.
fn check_diff(a: &ForwardingTable, b: &ForwardingTable) -> Result<(), TestCaseError> {
    prop_assert!(a.diff(a).is_empty());
    prop_assert!(b.diff(b).is_empty());
    let d = a.diff(b);
    prop_assert_eq!(d.is_empty(), a == b);
    let mut replay = a.clone();
    d.apply(&mut replay);
    prop_assert_eq!(&replay, b);
    let mut back = b.clone();
    b.diff(a).apply(&mut back);
    prop_assert_eq!(&back, a);
    check_map_diff(&d.links, &a.links, &b.links)?;
    check_map_diff(&d.routes, &a.routes, &b.routes)?;

    let everyone: BTreeSet<ParticipantId> = a
        .routes
        .keys()
        .chain(b.routes.keys())
        .map(|k| k.subscriber)
        .collect();
    let changed: BTreeSet<ParticipantId> = everyone
        .into_iter()
        .filter(|&s| routes_of(a, s) != routes_of(b, s))
        .collect();
    prop_assert_eq!(d.affected_subscribers(), changed.clone());
    prop_assert_eq!(b.diff(a).affected_subscribers(), changed);
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Properties
// ------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(cases(512))]

    /// The compiler agrees with the reference model, links and routes, keys and values.
    #[test]
    fn compile_matches_reference_model(state in state()) {
        prop_assert_eq!(compile(&state), reference(&state));
    }

    /// Nobody receives their own streams, not even through a session-wide subscription or a
    /// list that names themselves.
    #[test]
    fn nobody_receives_own_streams(state in state()) {
        let t = compile(&state);
        for k in t.routes.keys() {
            prop_assert_ne!(k.subscriber, k.publisher);
        }
        for k in t.links.keys() {
            prop_assert_ne!(k.subscriber, k.publisher);
        }
        // Even when everybody subscribes to everybody, themselves included.
        let mut all = state.clone();
        let everyone: Vec<ParticipantId> = all.members.iter().map(|m| m.id).collect();
        for m in &mut all.members {
            let list = everyone
                .iter()
                .map(|&participant| ParticipantSubscription { participant, stream_aliases: vec![] })
                .collect();
            m.subscriptions = Subscriptions::new(Some(this_session()), list).unwrap();
        }
        let t = compile(&all);
        for k in t.routes.keys() {
            prop_assert_ne!(k.subscriber, k.publisher);
        }
        for m in &all.members {
            let others: BTreeSet<ParticipantId> = all
                .members
                .iter()
                .filter(|p| p.id != m.id && publishes_something(&all, p.id))
                .map(|p| p.id)
                .collect();
            prop_assert_eq!(received(&t, m.id), others);
        }
    }

    /// Whisper: the caller hears the agent only, never the supervisor; the agent hears the caller
    /// and the supervisor; the supervisor hears both.
    #[test]
    fn whisper_caller_never_receives_supervisor((state, [caller, agent, supervisor]) in whisper()) {
        let t = compile(&state);
        prop_assert_eq!(received(&t, caller), BTreeSet::from([agent]));
        prop_assert_eq!(t.publishers_of(caller).collect::<Vec<_>>(), vec![agent]);
        let overheard = LinkKey { subscriber: caller, publisher: supervisor };
        prop_assert!(!t.links.contains_key(&overheard));
        for (_, r) in routes_of(&t, caller) {
            prop_assert_eq!(r.cause, Cause::Participant);
        }
        // Every stream of the agent reaches the caller (no filter, all kinds permitted).
        let agent_streams = state.streams.iter().filter(|s| s.publisher == agent).count();
        prop_assert_eq!(routes_of(&t, caller).len(), agent_streams);

        let agent_hears = received(&t, agent);
        prop_assert!(agent_hears.contains(&caller) && agent_hears.contains(&supervisor));
        let sup_hears = received(&t, supervisor);
        prop_assert!(sup_hears.contains(&caller) && sup_hears.contains(&agent));
        // Session-wide: exactly every other member with something to send.
        for who in [agent, supervisor] {
            let expected: BTreeSet<ParticipantId> = state
                .members
                .iter()
                .filter(|m| m.id != who && publishes_something(&state, m.id))
                .map(|m| m.id)
                .collect();
            prop_assert_eq!(received(&t, who), expected);
            for (_, r) in routes_of(&t, who) {
                prop_assert_eq!(r.cause, Cause::Session);
            }
        }
    }

    /// Alias filters: a route through a filtered entry carries an alias in the filter; an
    /// unaliased stream never matches a non-empty filter; every stream that matches a filter (and
    /// may be sent) does route; causes name the rule that was applied.
    #[test]
    fn alias_filters(state in state()) {
        let t = compile(&state);
        for (k, r) in &t.routes {
            let sub = member_of(&state, k.subscriber).unwrap();
            let stream = stream_of(&state, k.publisher, &k.stream).unwrap();
            prop_assert_eq!(&r.alias, &stream.alias);
            let list = &sub.subscriptions.participants;
            match list.iter().find(|e| e.participant == k.publisher) {
                Some(entry) if entry.stream_aliases.is_empty() => {
                    prop_assert_eq!(r.cause, Cause::Participant);
                }
                Some(entry) => {
                    prop_assert_eq!(r.cause, Cause::StreamAlias);
                    let alias = r.alias.as_ref();
                    prop_assert!(alias.is_some(), "unaliased stream matched filter {:?}", entry);
                    prop_assert!(entry.stream_aliases.contains(alias.unwrap()));
                }
                None => {
                    prop_assert!(list.is_empty(), "routed a publisher its list does not name");
                    prop_assert_eq!(r.cause, Cause::Session);
                    prop_assert_eq!(sub.subscriptions.session_id, state.session);
                }
            }
        }
        for sub in &state.members {
            for entry in &sub.subscriptions.participants {
                let Some(publisher) = member_of(&state, entry.participant) else { continue };
                if entry.stream_aliases.is_empty() || publisher.id == sub.id {
                    continue;
                }
                for stream in state.streams.iter().filter(|s| s.publisher == publisher.id) {
                    let matches = stream
                        .alias
                        .as_ref()
                        .is_some_and(|a| entry.stream_aliases.contains(a));
                    let sendable = !stream.kinds.intersect(publisher.publish).is_empty();
                    let key = RouteKey {
                        subscriber: sub.id,
                        publisher: publisher.id,
                        stream: stream.stream.clone(),
                    };
                    prop_assert_eq!(t.routes.contains_key(&key), matches && sendable, "{:?}", key);
                }
            }
        }
    }

    /// Only members route: non-members' streams and list entries naming non-members change
    /// nothing, and a list that names no other member receives nothing (it still overrides
    /// `sessionId`).
    #[test]
    fn only_members_route(state in state()) {
        let t = compile(&state);
        let is_member = |p: ParticipantId| member_of(&state, p).is_some();
        for k in t.links.keys() {
            prop_assert!(is_member(k.subscriber) && is_member(k.publisher));
        }
        for k in t.routes.keys() {
            prop_assert!(is_member(k.subscriber) && is_member(k.publisher));
            prop_assert!(stream_of(&state, k.publisher, &k.stream).is_some());
            let link = LinkKey { subscriber: k.subscriber, publisher: k.publisher };
            prop_assert!(t.links.contains_key(&link), "route without link: {:?}", k);
        }

        let mut members_only = state.clone();
        members_only.streams.retain(|s| is_member(s.publisher));
        for m in &mut members_only.members {
            let kept: Vec<ParticipantSubscription> = m
                .subscriptions
                .participants
                .iter()
                .filter(|e| is_member(e.participant))
                .cloned()
                .collect();
            if !kept.is_empty() {
                m.subscriptions.participants = kept;
            }
        }
        prop_assert_eq!(&compile(&members_only), &t);

        for m in &state.members {
            let list = &m.subscriptions.participants;
            if !list.is_empty() && list.iter().all(|e| e.participant == m.id || !is_member(e.participant)) {
                prop_assert!(t.links.keys().all(|k| k.subscriber != m.id));
                prop_assert!(received(&t, m.id).is_empty());
            }
        }
    }

    /// Publish permissions: a route carries only kinds its publisher may publish (and its stream
    /// carries), never none; widening permissions never loses a route.
    #[test]
    fn publish_permissions(state in state()) {
        let t = compile(&state);
        for (k, r) in &t.routes {
            let publisher = member_of(&state, k.publisher).unwrap();
            let stream = stream_of(&state, k.publisher, &k.stream).unwrap();
            prop_assert!(!r.kinds.is_empty(), "route with no kinds: {:?}", k);
            prop_assert!(subset(r.kinds, publisher.publish), "{:?} beyond permissions {:?}", r, publisher.publish);
            prop_assert!(subset(r.kinds, stream.kinds), "{:?} beyond the stream's kinds", r);
            prop_assert_eq!(r.kinds, stream.kinds.intersect(publisher.publish));
        }
        for m in state.members.iter().filter(|m| m.publish.is_empty()) {
            prop_assert!(t.routes.keys().all(|k| k.publisher != m.id));
        }
        let mut wide = state.clone();
        for m in &mut wide.members {
            m.publish = MediaKinds::ALL;
        }
        let w = compile(&wide);
        for k in t.routes.keys() {
            prop_assert!(w.routes.contains_key(k));
        }
        prop_assert_eq!(&w.links, &t.links);
    }

    /// `compile` does not depend on the order of members and streams.
    #[test]
    fn compile_ignores_input_order((a, b) in shuffled_pair(true)) {
        prop_assert_eq!(compile(&a), compile(&b));
    }

    /// ... even when a publisher announces the same stream id twice.
    #[test]
    fn compile_ignores_input_order_with_duplicate_streams((a, b) in shuffled_pair(false)) {
        prop_assert_eq!(compile(&a), compile(&b));
    }

    /// Diffs between consecutive versions of a session: empty on equal tables, minimal, sorted,
    /// replayable both ways; `affected_subscribers` is exactly who has different routes.
    #[test]
    fn diff_between_related_states((a, b) in related_pair()) {
        check_diff(&compile(&a), &compile(&b))?;
    }

    /// The same on unrelated tables (mostly disjoint).
    #[test]
    fn diff_between_any_states(a in state(), b in state()) {
        check_diff(&compile(&a), &compile(&b))?;
    }
}

// ------------------------------------------------------------------------------------------------
// The generators exercise what the properties are about
// ------------------------------------------------------------------------------------------------

/// Guards against vacuous properties: over a fixed sample, the generated states hit every cause,
/// filters that match and that don't, unaliased streams under filters, lists naming non-members
/// and the subscriber itself, permissions that drop kinds or whole streams, rules naming another
/// session, and pairs whose diffs both keep and change routes.
#[test]
fn generators_cover_the_rules() {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut hit =
        |what: &'static str, yes: bool| *seen.entry(what).or_default() += usize::from(yes);
    for _ in 0..500 {
        let state = state().new_tree(&mut runner).unwrap().current();
        let t = compile(&state);
        let is_member = |p: ParticipantId| member_of(&state, p).is_some();
        hit("20 members", state.members.len() == 20);
        hit("no session", state.session.is_none());
        for cause in [Cause::Session, Cause::Participant, Cause::StreamAlias] {
            let name = match cause {
                Cause::Session => "session route",
                Cause::Participant => "participant route",
                Cause::StreamAlias => "alias route",
            };
            hit(name, t.routes.values().any(|r| r.cause == cause));
        }
        hit(
            "stream of a non-member",
            state.streams.iter().any(|s| !is_member(s.publisher)),
        );
        hit("shared stream id", {
            let ids: Vec<_> = state.streams.iter().map(|s| &s.stream).collect();
            ids.iter().collect::<BTreeSet<_>>().len() < ids.len()
        });
        for m in &state.members {
            let list = &m.subscriptions.participants;
            hit(
                "list names a non-member",
                list.iter().any(|e| !is_member(e.participant)),
            );
            hit(
                "list names oneself",
                list.iter().any(|e| e.participant == m.id),
            );
            hit(
                "list overrides sessionId",
                !list.is_empty() && m.subscriptions.session_id.is_some(),
            );
            hit(
                "other session",
                list.is_empty() && m.subscriptions.session_id == Some(other_session()),
            );
            for e in list
                .iter()
                .filter(|e| !e.stream_aliases.is_empty() && is_member(e.participant))
            {
                for s in state
                    .streams
                    .iter()
                    .filter(|s| s.publisher == e.participant)
                {
                    match &s.alias {
                        None => hit("unaliased stream under a filter", true),
                        Some(a) if e.stream_aliases.contains(a) => hit("filter matches", true),
                        Some(_) => hit("filter misses", true),
                    }
                }
            }
        }
        for s in &state.streams {
            if let Some(p) = member_of(&state, s.publisher) {
                let k = s.kinds.intersect(p.publish);
                hit(
                    "permissions drop a stream",
                    !s.kinds.is_empty() && k.is_empty(),
                );
                hit("permissions drop a kind", !k.is_empty() && k != s.kinds);
            }
        }
    }
    for _ in 0..400 {
        let (a, b) = related_pair().new_tree(&mut runner).unwrap().current();
        let (a, b) = (compile(&a), compile(&b));
        let d = a.diff(&b);
        hit(
            "diff keeps routes",
            a.routes.keys().any(|k| b.routes.contains_key(k)),
        );
        hit(
            "diff adds routes",
            d.routes
                .upserted
                .iter()
                .any(|(k, _)| !a.routes.contains_key(k)),
        );
        hit(
            "diff changes routes",
            d.routes
                .upserted
                .iter()
                .any(|(k, _)| a.routes.contains_key(k)),
        );
        hit("diff removes routes", !d.routes.removed.is_empty());
        hit(
            "diff changes links only",
            !d.links.is_empty() && d.routes.is_empty(),
        );
    }
    let missing: Vec<_> = seen.iter().filter(|(_, &n)| n < 5).collect();
    assert!(
        missing.is_empty(),
        "rarely or never generated: {missing:?} (all: {seen:?})"
    );
}

/// The reference model itself, on the hand-worked example of the module tests.
#[test]
fn reference_model_sanity() {
    let [a, b, c] = [pid(1), pid(2), pid(3)];
    let state = SessionState {
        session: Some(this_session()),
        members: vec![
            Member {
                id: a,
                publish: MediaKinds::ALL,
                subscriptions: Subscriptions::new(
                    Some(this_session()),
                    vec![ParticipantSubscription {
                        participant: b,
                        stream_aliases: vec![alias("cam")],
                    }],
                )
                .unwrap(),
            },
            Member {
                id: b,
                publish: MediaKinds::AUDIO,
                subscriptions: Subscriptions::new(Some(this_session()), vec![]).unwrap(),
            },
        ],
        streams: vec![
            PublishedStream {
                publisher: b,
                stream: StreamId::parse("s1").unwrap(),
                alias: Some(alias("cam")),
                kinds: MediaKinds::ALL,
            },
            PublishedStream {
                publisher: b,
                stream: StreamId::parse("s2").unwrap(),
                alias: None,
                kinds: MediaKinds::ALL,
            },
            PublishedStream {
                publisher: a,
                stream: StreamId::parse("s3").unwrap(),
                alias: None,
                kinds: MediaKinds::VIDEO,
            },
            PublishedStream {
                publisher: c,
                stream: StreamId::parse("s4").unwrap(),
                alias: None,
                kinds: MediaKinds::ALL,
            },
        ],
    };
    let t = reference(&state);
    let routes: Vec<(ParticipantId, ParticipantId, &str, MediaKinds, Cause)> = t
        .routes
        .iter()
        .map(|(k, r)| {
            (
                k.subscriber,
                k.publisher,
                k.stream.as_str(),
                r.kinds,
                r.cause,
            )
        })
        .collect();
    assert_eq!(
        routes,
        vec![
            (a, b, "s1", MediaKinds::AUDIO, Cause::StreamAlias),
            (b, a, "s3", MediaKinds::VIDEO, Cause::Session),
        ]
    );
    assert_eq!(t.links.len(), 2);
    assert_eq!(compile(&state), t);
}
