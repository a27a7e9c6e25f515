//! Benchmarks of the forwarding compiler and of table diffs.
//!
//! Run with `cargo bench --bench forwarding -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use patchbay::domain::{
    MediaKinds, ParticipantId, ParticipantSubscription, SessionId, StreamAlias, StreamId,
    Subscriptions,
};
use patchbay::forwarding::{compile, ForwardingTable, Member, PublishedStream, SessionState};

fn pid(n: usize) -> ParticipantId {
    ParticipantId::parse(&format!("00000000-0000-4000-8000-{n:012x}")).unwrap()
}

fn session() -> SessionId {
    SessionId::parse("5e5510e0-0000-4000-8000-000000000001").unwrap()
}

/// One audio+video stream per publisher, as a browser with a camera publishes.
fn camera(publisher: ParticipantId, n: usize) -> PublishedStream {
    PublishedStream {
        publisher,
        stream: StreamId::parse(&format!("msid-{n:04}")).unwrap(),
        alias: Some(StreamAlias::parse("cam").unwrap()),
        kinds: MediaKinds::ALL,
    }
}

/// `n` members, each subscribed to the whole session and publishing one audio+video stream.
fn mesh(n: usize) -> SessionState {
    let ids: Vec<ParticipantId> = (1..=n).map(pid).collect();
    SessionState {
        session: Some(session()),
        members: ids
            .iter()
            .map(|&id| Member {
                id,
                publish: MediaKinds::ALL,
                subscriptions: Subscriptions::new(Some(session()), vec![]).unwrap(),
            })
            .collect(),
        streams: ids.iter().enumerate().map(|(i, &p)| camera(p, i)).collect(),
    }
}

/// Caller subscribed to the agent only; agent and supervisor to the whole session.
fn whisper() -> SessionState {
    let [caller, agent, supervisor] = [pid(1), pid(2), pid(3)];
    let whole = || Subscriptions::new(Some(session()), vec![]).unwrap();
    let member = |id, subscriptions| Member {
        id,
        publish: MediaKinds::ALL,
        subscriptions,
    };
    let only_agent = Subscriptions::new(
        None,
        vec![ParticipantSubscription {
            participant: agent,
            stream_aliases: vec![],
        }],
    )
    .unwrap();
    SessionState {
        session: Some(session()),
        members: vec![
            member(caller, only_agent),
            member(agent, whole()),
            member(supervisor, whole()),
        ],
        streams: vec![camera(caller, 0), camera(agent, 1), camera(supervisor, 2)],
    }
}

/// The 20-party mesh before and after one member (and its stream) leaves.
fn mesh_one_leaves() -> (ForwardingTable, ForwardingTable) {
    let before = mesh(20);
    let mut after = before.clone();
    let gone = after.members.remove(7).id;
    after.streams.retain(|s| s.publisher != gone);
    (compile(&before), compile(&after))
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    let mesh = mesh(20);
    assert_eq!(compile(&mesh).routes.len(), 20 * 19);
    group.bench_function("20-party full mesh", |b| {
        b.iter(|| compile(black_box(&mesh)))
    });
    let whisper = whisper();
    assert_eq!(compile(&whisper).routes.len(), 1 + 2 + 2);
    group.bench_function("3-party whisper", |b| {
        b.iter(|| compile(black_box(&whisper)))
    });
    group.finish();
}

fn bench_diff(c: &mut Criterion) {
    let (before, after) = mesh_one_leaves();
    let diff = before.diff(&after);
    // What the leaver received and what it sent to the 19 others.
    assert_eq!(diff.routes.removed.len(), 19 + 19);
    assert!(diff.routes.upserted.is_empty());
    assert_eq!(diff.affected_subscribers().len(), 20);

    let mut group = c.benchmark_group("diff");
    group.bench_function("20-party mesh one member leaves", |b| {
        b.iter(|| black_box(&before).diff(black_box(&after)))
    });
    group.finish();

    let mut group = c.benchmark_group("diff+apply");
    group.bench_function("20-party mesh one member leaves", |b| {
        b.iter_batched(
            || before.clone(),
            |mut table| {
                let diff = table.diff(black_box(&after));
                diff.apply(&mut table);
                table
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_compile, bench_diff);
criterion_main!(benches);
