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
