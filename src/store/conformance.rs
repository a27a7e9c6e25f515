//! The conformance suite every [`Store`] adapter must pass.
//!
//! Each case is a public async function taking a fresh handle on the store under test; it
//! panics on failure. `tests/store/main.rs` runs every case against SQLite and PostgreSQL.
//! Cases create their own account (random id), so they can share one database and run
//! concurrently.
#![allow(clippy::disallowed_methods)] // a test suite: concurrent requests need tasks

use std::sync::Arc;

use super::{
    AccountCredentials, AttemptOutcome, DeliveryAttempt, NewOutboxEvent, OutboxEvent, Store,
    StoreError,
};
use crate::domain::{
    AccountId, CallbackUrl, DeviceApiVersion, LayoutLine, LineContent, MediaKind, MediaKinds,
    Participant, ParticipantId, ParticipantSubscription, PublishCredentials, Session, SessionId,
    StreamAlias, StreamId, SubscribeLayout, Subscriptions, Tag, MAX_SESSION_MEMBERS,
};

/// A handle on the store under test.
pub type TestStore = Arc<dyn Store>;

/// Every case, by name, for harnesses that want to iterate.
pub const CASES: &[&str] = &[
    "accounts",
    "secrets",
    "sessions",
    "participants",
    "membership",
    "member_cap",
    "concurrent_member_cap",
    "concurrent_moves",
    "subscriptions",
    "batch_subscriptions_are_atomic",
    "deleting_a_publisher_prunes_subscriptions",
    "webhook_settings",
    "webhook_outbox",
    "webhook_outbox_turns",
    "webhook_outbox_claims",
    "webhook_retention",
    "webhook_secret_rotation",
    "sessions_by_age",
    "participants_by_age",
    "operator",
    "subscribe_layouts",
    "session_placement",
    "cluster_duties",
    "live_quality",
];

async fn new_account(store: &TestStore) -> AccountId {
    let n = rand::random::<u32>();
    let account = AccountId::parse(&format!("t{n:08x}")).expect("valid account id");
    store
        .create_account(&AccountCredentials {
            account: account.clone(),
            username: format!("user-{account}"),
            password_sha256: "00".repeat(32),
        })
        .await
        .expect("create account");
    account
}

fn participant(account: &AccountId) -> Participant {
    Participant {
        id: ParticipantId::random(),
        account: account.clone(),
        callback_url: None,
        publish_permissions: MediaKinds::ALL,
        tag: None,
        device_api_version: DeviceApiVersion::V3,
        session: None,
        subscriptions: Subscriptions::default(),
    }
}

async fn new_participant(store: &TestStore, account: &AccountId) -> ParticipantId {
    let p = participant(account);
    store
        .create_participant(&p)
        .await
        .expect("create participant");
    p.id
}

async fn new_session(store: &TestStore, account: &AccountId) -> SessionId {
    let s = Session {
        id: SessionId::random(),
        account: account.clone(),
        tag: Some(Tag::parse("room").expect("tag")),
    };
    store.create_session(&s).await.expect("create session");
    s.id
}

fn listing(ids: &[ParticipantId]) -> Subscriptions {
    Subscriptions::new(
        None,
        ids.iter()
            .map(|&participant| ParticipantSubscription {
                participant,
                stream_aliases: Vec::new(),
            })
            .collect(),
    )
    .expect("unique")
}

/// Accounts: created, found by username (and only by a known one), not created twice.
pub async fn accounts(store: TestStore) {
    let account = new_account(&store).await;
    let creds = store
        .account_by_username(&format!("user-{account}"))
        .await
        .expect("lookup")
        .expect("found");
    assert_eq!(creds.account, account);
    assert_eq!(creds.password_sha256, "00".repeat(32));
    assert!(store
        .account_by_username("nobody-here")
        .await
        .expect("lookup")
        .is_none());
    let again = store
        .create_account(&AccountCredentials {
            account: account.clone(),
            username: "another-name".into(),
            password_sha256: "11".repeat(32),
        })
        .await;
    assert!(matches!(again, Err(StoreError::AccountExists(a)) if a == account));
    assert!(store.account_count().await.expect("count") >= 1);
    store.ping().await.expect("ping");
}

/// Named secrets: the first candidate stored is the one every later call returns.
pub async fn secrets(store: TestStore) {
    let name = format!("case-{}", rand::random::<u64>());
    let first = store.secret(&name, b"first").await.expect("secret");
    assert_eq!(first, b"first");
    let second = store.secret(&name, b"second").await.expect("secret");
    assert_eq!(second, b"first", "the first stored secret wins");
}

/// Sessions: created with or without a tag, invisible to other accounts, deleted once.
pub async fn sessions(store: TestStore) {
    let account = new_account(&store).await;
    let other = new_account(&store).await;
    let id = new_session(&store, &account).await;
    let got = store
        .session(&account, id)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.tag.as_ref().map(Tag::as_str), Some("room"));
    assert!(
        store.session(&other, id).await.expect("get").is_none(),
        "other accounts see nothing"
    );
    assert!(matches!(
        store.delete_session(&other, id).await,
        Err(StoreError::SessionNotFound)
    ));
    let untagged = Session {
        id: SessionId::random(),
        account: account.clone(),
        tag: None,
    };
    store.create_session(&untagged).await.expect("create");
    assert_eq!(
        store.session(&account, untagged.id).await.expect("get"),
        Some(untagged)
    );
    assert_eq!(
        store.delete_session(&account, id).await.expect("delete"),
        vec![]
    );
    assert!(store.session(&account, id).await.expect("get").is_none());
    assert!(matches!(
        store.delete_session(&account, id).await,
        Err(StoreError::SessionNotFound)
    ));
    assert!(matches!(
        store.members(&account, id).await,
        Err(StoreError::SessionNotFound)
    ));
}

/// Participants: stored and read back whole, invisible to other accounts, deleted once,
/// refused for an unknown account.
pub async fn participants(store: TestStore) {
    let account = new_account(&store).await;
    let other = new_account(&store).await;
    let p = Participant {
        callback_url: Some(CallbackUrl::parse("https://example.com/cb").expect("url")),
        publish_permissions: MediaKinds::AUDIO,
        tag: Some(Tag::parse("phone-leg").expect("tag")),
        device_api_version: DeviceApiVersion::V2,
        ..participant(&account)
    };
    store.create_participant(&p).await.expect("create");
    assert_eq!(
        store.participant(&account, p.id).await.expect("get"),
        Some(p.clone())
    );
    assert!(store
        .participant(&other, p.id)
        .await
        .expect("get")
        .is_none());
    assert!(matches!(
        store.delete_participant(&other, p.id).await,
        Err(StoreError::ParticipantNotFound)
    ));
    assert_eq!(
        store
            .delete_participant(&account, p.id)
            .await
            .expect("delete"),
        None
    );
    assert!(store
        .participant(&account, p.id)
        .await
        .expect("get")
        .is_none());
    assert!(matches!(
        store.delete_participant(&account, p.id).await,
        Err(StoreError::ParticipantNotFound)
    ));
    let ghost = participant(&AccountId::parse("no-such-acct").expect("id"));
    assert!(matches!(
        store.create_participant(&ghost).await,
        Err(StoreError::AccountNotFound)
    ));
}

/// Membership: adding (keeping or replacing rules), one session per participant, removing
/// (with the rules), listing by id, and what deleting a session or a participant releases.
pub async fn membership(store: TestStore) {
    let account = new_account(&store).await;
    let s1 = new_session(&store, &account).await;
    let s2 = new_session(&store, &account).await;
    let a = new_participant(&store, &account).await;
    let b = new_participant(&store, &account).await;

    let whole = Subscriptions::new(Some(s1), vec![]).expect("subs");
    store
        .add_member(&account, s1, a, Some(&whole))
        .await
        .expect("add a");
    store
        .add_member(&account, s1, b, None)
        .await
        .expect("add b");
    let got = store
        .participant(&account, a)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.session, Some(s1));
    assert_eq!(got.subscriptions, whole);

    // Re-adding without rules keeps them; with rules replaces them.
    store
        .add_member(&account, s1, a, None)
        .await
        .expect("re-add");
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        whole
    );
    store
        .add_member(&account, s1, a, Some(&listing(&[b])))
        .await
        .expect("re-add");
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        listing(&[b])
    );

    // One session per participant.
    assert!(
        matches!(store.add_member(&account, s2, a, None).await, Err(StoreError::InAnotherSession(s)) if s == s1)
    );

    let mut expect = vec![a, b];
    expect.sort();
    let members: Vec<_> = store
        .members(&account, s1)
        .await
        .expect("members")
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(members, expect);

    // Removing a member removes its rules; it can then join elsewhere.
    store.remove_member(&account, s1, a).await.expect("remove");
    let got = store
        .participant(&account, a)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        (got.session, got.subscriptions),
        (None, Subscriptions::default())
    );
    assert!(matches!(
        store.remove_member(&account, s1, a).await,
        Err(StoreError::NotAMember)
    ));
    assert!(matches!(
        store
            .remove_member(&account, s1, ParticipantId::random())
            .await,
        Err(StoreError::ParticipantNotFound)
    ));
    store.add_member(&account, s2, a, None).await.expect("move");

    // Deleting a session releases its members.
    assert_eq!(
        store.delete_session(&account, s1).await.expect("delete"),
        vec![b]
    );
    assert_eq!(
        store
            .participant(&account, b)
            .await
            .expect("get")
            .expect("found")
            .session,
        None
    );
    assert_eq!(
        store.delete_participant(&account, a).await.expect("delete"),
        Some(s2)
    );
    assert!(store
        .members(&account, s2)
        .await
        .expect("members")
        .is_empty());

    // Unknown session or participant, or another account's.
    let other = new_account(&store).await;
    assert!(matches!(
        store.add_member(&other, s2, b, None).await,
        Err(StoreError::SessionNotFound)
    ));
    assert!(matches!(
        store
            .add_member(&account, s2, ParticipantId::random(), None)
            .await,
        Err(StoreError::ParticipantNotFound)
    ));
}

/// The member cap: one past [`MAX_SESSION_MEMBERS`] is refused; a member can still be re-added
/// and a freed place taken.
pub async fn member_cap(store: TestStore) {
    let account = new_account(&store).await;
    let s = new_session(&store, &account).await;
    let mut ids = Vec::new();
    for _ in 0..MAX_SESSION_MEMBERS {
        let p = new_participant(&store, &account).await;
        store.add_member(&account, s, p, None).await.expect("add");
        ids.push(p);
    }
    let extra = new_participant(&store, &account).await;
    assert!(matches!(
        store.add_member(&account, s, extra, None).await,
        Err(StoreError::SessionFull)
    ));
    // A member can still be re-added (to change its rules) when the session is full.
    store
        .add_member(&account, s, ids[0], Some(&listing(&ids[1..3])))
        .await
        .expect("re-add");
    store
        .remove_member(&account, s, ids[1])
        .await
        .expect("remove");
    store
        .add_member(&account, s, extra, None)
        .await
        .expect("room again");
}

/// The member cap under 50 concurrent joins: exactly [`MAX_SESSION_MEMBERS`] succeed.
pub async fn concurrent_member_cap(store: TestStore) {
    let account = new_account(&store).await;
    let s = new_session(&store, &account).await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(new_participant(&store, &account).await);
    }
    let tasks: Vec<_> = ids
        .iter()
        .map(|&p| {
            let (store, account) = (store.clone(), account.clone());
            tokio::spawn(async move { store.add_member(&account, s, p, None).await })
        })
        .collect();
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => ok += 1,
            Err(StoreError::SessionFull) => full += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!((ok, full), (MAX_SESSION_MEMBERS, 50 - MAX_SESSION_MEMBERS));
    assert_eq!(
        store.members(&account, s).await.expect("members").len(),
        MAX_SESSION_MEMBERS
    );
}

/// One participant joining 8 sessions at once ends in exactly one of them.
pub async fn concurrent_moves(store: TestStore) {
    let account = new_account(&store).await;
    let p = new_participant(&store, &account).await;
    let mut sessions = Vec::new();
    for _ in 0..8 {
        sessions.push(new_session(&store, &account).await);
    }
    let tasks: Vec<_> = sessions
        .iter()
        .map(|&s| {
            let (store, account) = (store.clone(), account.clone());
            tokio::spawn(async move { (s, store.add_member(&account, s, p, None).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (s, Ok(())) => winners.push(s),
            (_, Err(StoreError::InAnotherSession(_))) => {}
            (_, Err(e)) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "a participant joins exactly one session");
    let got = store
        .participant(&account, p)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.session, Some(winners[0]));
}

/// Subscription rules: stored in order with their aliases, replaced whole, refused (changing
/// nothing) when they name an unknown or foreign publisher, only for members.
pub async fn subscriptions(store: TestStore) {
    let account = new_account(&store).await;
    let other = new_account(&store).await;
    let s = new_session(&store, &account).await;
    let a = new_participant(&store, &account).await;
    let b = new_participant(&store, &account).await;
    let outsider = new_participant(&store, &account).await; // same account, not a member
    let foreign = new_participant(&store, &other).await;
    store.add_member(&account, s, a, None).await.expect("add");
    store.add_member(&account, s, b, None).await.expect("add");

    let rules = Subscriptions::new(
        Some(s),
        vec![
            ParticipantSubscription {
                participant: b,
                stream_aliases: vec![
                    StreamAlias::parse("cam").expect("alias"),
                    StreamAlias::parse("screen").expect("alias"),
                ],
            },
            ParticipantSubscription {
                participant: outsider,
                stream_aliases: vec![],
            },
        ],
    )
    .expect("subs");
    store
        .set_subscriptions(&account, s, &[(a, rules.clone())])
        .await
        .expect("set");
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        rules,
        "order and aliases kept"
    );

    // Full replace, not merge.
    let whole = Subscriptions::new(Some(s), vec![]).expect("subs");
    store
        .set_subscriptions(&account, s, &[(a, whole.clone())])
        .await
        .expect("set");
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        whole
    );

    // Unknown or foreign publishers are refused and change nothing.
    for bad in [ParticipantId::random(), foreign] {
        let r = store
            .set_subscriptions(&account, s, &[(a, listing(&[b, bad]))])
            .await;
        assert!(matches!(r, Err(StoreError::UnknownPublisher(p)) if p == bad));
        assert_eq!(
            store
                .participant(&account, a)
                .await
                .expect("get")
                .expect("found")
                .subscriptions,
            whole
        );
    }
    // Only members have rules in a session.
    assert!(matches!(
        store
            .set_subscriptions(&account, s, &[(outsider, listing(&[a]))])
            .await,
        Err(StoreError::NotAMember)
    ));
    assert!(matches!(
        store
            .set_subscriptions(&other, s, &[(a, listing(&[b]))])
            .await,
        Err(StoreError::SessionNotFound)
    ));
    store
        .set_subscriptions(&account, s, &[(a, Subscriptions::default())])
        .await
        .expect("clear");
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        Subscriptions::default()
    );
}

/// A batch of rule changes with one bad change applies none of them; a good batch applies all.
pub async fn batch_subscriptions_are_atomic(store: TestStore) {
    let account = new_account(&store).await;
    let s = new_session(&store, &account).await;
    let (a, b, c) = (
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
    );
    for p in [a, b] {
        store.add_member(&account, s, p, None).await.expect("add");
    }
    let r = store
        .set_subscriptions(&account, s, &[(a, listing(&[b])), (c, listing(&[a]))])
        .await;
    assert!(matches!(r, Err(StoreError::NotAMember)));
    assert_eq!(
        store
            .participant(&account, a)
            .await
            .expect("get")
            .expect("found")
            .subscriptions,
        Subscriptions::default(),
        "the first change was rolled back"
    );
    store
        .set_subscriptions(&account, s, &[(a, listing(&[b])), (b, listing(&[a]))])
        .await
        .expect("batch");
    let members = store.members(&account, s).await.expect("members");
    for m in members {
        let peer = if m.id == a { b } else { a };
        assert_eq!(m.subscriptions, listing(&[peer]));
    }
}

/// Deleting a participant takes it out of the rules of the others.
pub async fn deleting_a_publisher_prunes_subscriptions(store: TestStore) {
    let account = new_account(&store).await;
    let s = new_session(&store, &account).await;
    let (a, b, c) = (
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
    );
    for p in [a, b, c] {
        store.add_member(&account, s, p, None).await.expect("add");
    }
    store
        .set_subscriptions(&account, s, &[(a, listing(&[b, c]))])
        .await
        .expect("set");
    assert_eq!(
        store.delete_participant(&account, b).await.expect("delete"),
        Some(s)
    );
    let got = store
        .participant(&account, a)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(got.subscriptions, listing(&[c]));
}

/// Webhook settings: the first secret offered stays, the Bandwidth-only choice is stored, the
/// target of a participant names its account, `callbackUrl` and tag.
pub async fn webhook_settings(store: TestStore) {
    let account = new_account(&store).await;
    let first = store
        .account_webhooks(&account, "whsec_first")
        .await
        .expect("settings");
    assert_eq!(first.secret, "whsec_first");
    assert!(!first.bandwidth_only);
    let again = store
        .account_webhooks(&account, "whsec_second")
        .await
        .expect("settings");
    assert_eq!(again.secret, "whsec_first", "first writer wins");
    store
        .set_webhook_bandwidth_only(&account, true)
        .await
        .expect("set");
    assert!(
        store
            .account_webhooks(&account, "x")
            .await
            .expect("settings")
            .bandwidth_only
    );
    let speaker = |s: super::AccountWebhooks| (s.bandwidth_only, s.active_speaker_events);
    let read = store
        .account_webhooks(&account, "x")
        .await
        .expect("settings");
    assert_eq!(
        speaker(read),
        (true, false),
        "onActiveSpeaker is off by default"
    );
    store
        .set_webhook_opt_in(&account, super::WebhookOptIn::ActiveSpeaker, true)
        .await
        .expect("set");
    let read = store
        .account_webhooks(&account, "x")
        .await
        .expect("settings");
    assert_eq!(speaker(read), (true, true), "each setting is its own");
    store
        .set_webhook_bandwidth_only(&account, false)
        .await
        .expect("set");
    let read = store
        .account_webhooks(&account, "x")
        .await
        .expect("settings");
    assert_eq!(speaker(read), (false, true));
    store
        .set_webhook_opt_in(&account, super::WebhookOptIn::ActiveSpeaker, false)
        .await
        .expect("set");
    let read = store
        .account_webhooks(&account, "x")
        .await
        .expect("settings");
    assert_eq!(speaker(read), (false, false));
    // onQualityChanged: off by default, its own setting.
    assert!(
        !store
            .account_webhooks(&account, "x")
            .await
            .expect("settings")
            .quality_events
    );
    store
        .set_webhook_opt_in(&account, super::WebhookOptIn::QualityChanged, true)
        .await
        .expect("set");
    let read = store
        .account_webhooks(&account, "x")
        .await
        .expect("settings");
    assert!(
        read.quality_events && !read.active_speaker_events,
        "{read:?}"
    );
    store
        .set_webhook_opt_in(&account, super::WebhookOptIn::QualityChanged, false)
        .await
        .expect("set");
    assert!(
        !store
            .account_webhooks(&account, "x")
            .await
            .expect("settings")
            .quality_events
    );
    let nobody = AccountId::parse("nobody-here").expect("id");
    assert!(matches!(
        store
            .set_webhook_opt_in(&nobody, super::WebhookOptIn::QualityChanged, true)
            .await,
        Err(StoreError::AccountNotFound)
    ));
    assert!(matches!(
        store.account_webhooks(&nobody, "x").await,
        Err(StoreError::AccountNotFound)
    ));
    assert!(matches!(
        store.set_webhook_bandwidth_only(&nobody, true).await,
        Err(StoreError::AccountNotFound)
    ));
    let mut p = participant(&account);
    p.callback_url = Some(CallbackUrl::parse("https://backend.example/hooks").expect("url"));
    p.tag = Some(Tag::parse("agent").expect("tag"));
    store.create_participant(&p).await.expect("participant");
    let target = store
        .webhook_target(p.id)
        .await
        .expect("target")
        .expect("exists");
    assert_eq!(target.account, account);
    assert_eq!(target.callback_url, p.callback_url);
    assert_eq!(target.tag, p.tag);
    assert_eq!(
        store
            .webhook_target(ParticipantId::random())
            .await
            .expect("target"),
        None
    );
}

fn outbox_event(account: &AccountId, participant: ParticipantId, n: u32) -> NewOutboxEvent {
    NewOutboxEvent {
        id: format!("msg_{}_{n}", participant.to_string().replace('-', "")),
        account: account.clone(),
        participant,
        url: "http://127.0.0.1:9/hook".into(),
        event: "onConnect".into(),
        body: format!("{{\"n\":{n}}}"),
        created_at_ms: 1_000,
    }
}

/// The process whose attempts the cases record (events they never claimed).
const CLAIMANT: &str = "conformance";

/// The account's due heads: other cases' rows share the database.
async fn due_of(store: &TestStore, account: &AccountId, now_ms: i64) -> Vec<OutboxEvent> {
    store
        .outbox_due(now_ms, 100_000, u32::MAX)
        .await
        .expect("due")
        .into_iter()
        .filter(|e| &e.event.account == account)
        .collect()
}

fn attempt(event: &OutboxEvent, status: Option<u16>, at_ms: i64) -> DeliveryAttempt {
    DeliveryAttempt {
        event_id: event.event.id.clone(),
        event: event.event.event.clone(),
        attempt: event.attempts + 1,
        status,
        error: status.is_none().then(|| "timed out".to_owned()),
        at_ms,
    }
}

/// Several processes on one database deliver each attempt once: of concurrent claims of one
/// event exactly one wins; a claimed head is not due (nor is its participant's next event)
/// until its claim ends, by the attempt's record or by its time; a delivered event cannot be
/// claimed again.
pub async fn webhook_outbox_claims(store: TestStore) {
    let account = new_account(&store).await;
    store
        .account_webhooks(&account, "whsec_k")
        .await
        .expect("secret");
    let (p, q) = (ParticipantId::random(), ParticipantId::random());
    let events = [
        outbox_event(&account, p, 1),
        outbox_event(&account, p, 2),
        outbox_event(&account, q, 1),
    ];
    store.outbox_append(&events).await.expect("append");
    let now = 10_000_000_000_000;
    let heads = due_of(&store, &account, now).await;
    assert_eq!(heads.len(), 2, "one head per participant");
    let seqs: Vec<i64> = heads.iter().map(|e| e.seq).collect();

    // Eight claimants at once: each head goes to exactly one.
    let mut claims = tokio::task::JoinSet::new();
    for n in 0..8 {
        let (store, seqs) = (store.clone(), seqs.clone());
        claims.spawn(async move {
            let got = store
                .outbox_claim(&seqs, &format!("node-{n}"), now, now + 1_000)
                .await
                .expect("claim");
            (n, got)
        });
    }
    let mut winners = Vec::new();
    while let Some(done) = claims.join_next().await {
        let (n, got) = done.expect("claim task");
        winners.extend(got.into_iter().map(|seq| (seq, n)));
    }
    winners.sort();
    assert_eq!(
        winners.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        {
            let mut s = seqs.clone();
            s.sort();
            s
        },
        "each head claimed exactly once: {winners:?}"
    );

    // Claimed: nothing of either participant is due, until the claims end by themselves.
    assert!(due_of(&store, &account, now + 999).await.is_empty());
    assert_eq!(due_of(&store, &account, now + 1_000).await.len(), 2);

    // The attempt's record ends the claim: p's head delivered, its next event is due.
    let p_head = heads
        .iter()
        .find(|e| e.event.participant == p)
        .expect("p's head");
    let p_claimant = winners
        .iter()
        .find(|(seq, _)| *seq == p_head.seq)
        .map(|(_, n)| format!("node-{n}"))
        .expect("p's head was claimed");
    // Another process's late record of an attempt it no longer holds the claim for changes
    // nothing (its claim ended, and someone else claimed the event).
    store
        .outbox_attempted(
            p_head,
            &attempt(p_head, None, now),
            AttemptOutcome::RetryAt(now),
            "a-stale-claimant",
        )
        .await
        .expect("attempted");
    assert!(
        due_of(&store, &account, now + 1).await.is_empty(),
        "the stale record neither released nor rescheduled the claimed head"
    );
    store
        .outbox_attempted(
            p_head,
            &attempt(p_head, Some(200), now),
            AttemptOutcome::Delivered,
            &p_claimant,
        )
        .await
        .expect("attempted");
    let due = due_of(&store, &account, now + 1).await;
    assert_eq!(
        due.iter().map(|e| e.event.id.clone()).collect::<Vec<_>>(),
        [events[1].id.clone()],
        "p's next event is due; q's head is still claimed"
    );
    assert!(
        store
            .outbox_claim(&[p_head.seq], "late", now + 5_000, now + 6_000)
            .await
            .expect("claim")
            .is_empty(),
        "a delivered event is not claimed again"
    );
}

/// Accounts take turns in the due list: at most `per_account` heads of one account, every
/// account's first before any account's second, so one account's backlog of due events never
/// hides another account's.
pub async fn webhook_outbox_turns(store: TestStore) {
    let (a, b) = (new_account(&store).await, new_account(&store).await);
    for account in [&a, &b] {
        store
            .account_webhooks(account, "whsec_k")
            .await
            .expect("secret");
    }
    let backlog: Vec<NewOutboxEvent> = (0..3)
        .map(|n| outbox_event(&a, ParticipantId::random(), n))
        .collect();
    store.outbox_append(&backlog).await.expect("append a");
    let late = outbox_event(&b, ParticipantId::random(), 1);
    store
        .outbox_append(std::slice::from_ref(&late))
        .await
        .expect("append b");
    let due: Vec<String> = store
        .outbox_due(i64::MAX / 2, 100_000, 2)
        .await
        .expect("due")
        .into_iter()
        .filter(|e| e.event.account == a || e.event.account == b)
        .map(|e| e.event.id)
        .collect();
    assert_eq!(
        due,
        vec![
            backlog[0].id.clone(),
            late.id.clone(),
            backlog[1].id.clone()
        ],
        "a's first, b's first, a's second; a's third waits for a place"
    );
}

/// The outbox: only the head of each participant's queue is due; a retry holds the queue
/// behind it and lets other participants' move; delivered and given-up events leave it;
/// every attempt is logged, newest first.
pub async fn webhook_outbox(store: TestStore) {
    let account = new_account(&store).await;
    store
        .account_webhooks(&account, "whsec_k")
        .await
        .expect("secret");
    let (a, b) = (ParticipantId::random(), ParticipantId::random());
    let (a1, a2, b1) = (
        outbox_event(&account, a, 1),
        outbox_event(&account, a, 2),
        outbox_event(&account, b, 1),
    );
    store
        .outbox_append(&[a1.clone(), a2.clone(), b1.clone()])
        .await
        .expect("append");
    let due = due_of(&store, &account, 2_000).await;
    let heads: Vec<&NewOutboxEvent> = due.iter().map(|e| &e.event).collect();
    assert_eq!(heads, vec![&a1, &b1], "heads only, in order");
    assert!(due.iter().all(|e| e.attempts == 0 && e.secret == "whsec_k"));
    assert!(
        due_of(&store, &account, 500).await.is_empty(),
        "not due yet"
    );

    let head_a = due[0].clone();
    store
        .outbox_attempted(
            &head_a,
            &attempt(&head_a, Some(500), 2_000),
            AttemptOutcome::RetryAt(5_000),
            CLAIMANT,
        )
        .await
        .expect("attempted");
    let due = due_of(&store, &account, 3_000).await;
    assert_eq!(due.len(), 1, "a's queue waits behind its head");
    assert_eq!(due[0].event, b1);
    let due = due_of(&store, &account, 5_000).await;
    let retried = due.iter().find(|e| e.event == a1).expect("a1 due again");
    assert_eq!(retried.attempts, 1);
    let retried = retried.clone();
    store
        .outbox_attempted(
            &retried,
            &attempt(&retried, Some(204), 5_000),
            AttemptOutcome::Delivered,
            CLAIMANT,
        )
        .await
        .expect("attempted");
    let head_b = due.iter().find(|e| e.event == b1).expect("b1").clone();
    store
        .outbox_attempted(
            &head_b,
            &attempt(&head_b, None, 5_000),
            AttemptOutcome::GaveUp,
            CLAIMANT,
        )
        .await
        .expect("attempted");
    let due = due_of(&store, &account, 6_000).await;
    let heads: Vec<&NewOutboxEvent> = due.iter().map(|e| &e.event).collect();
    assert_eq!(heads, vec![&a2], "a1 delivered, b1 given up");

    let log = store.delivery_log(&account, a, 10).await.expect("log");
    assert_eq!(
        log.iter()
            .map(|l| (l.attempt, l.status))
            .collect::<Vec<_>>(),
        vec![(2, Some(204)), (1, Some(500))]
    );
    let log = store.delivery_log(&account, b, 10).await.expect("log");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].error.as_deref(), Some("timed out"));
    assert!(store.outbox_pending().await.expect("pending") >= 1);
}

/// Retention: delivered and given-up events, and attempts, that ended before the cutoff are
/// deleted (at most `limit` rows of each per call); pending events and newer rows stay.
/// Times here are below 1.5 s after the epoch, before any other case's rows.
pub async fn webhook_retention(store: TestStore) {
    let account = new_account(&store).await;
    store
        .account_webhooks(&account, "whsec_k")
        .await
        .expect("secret");
    let (a, b, c) = (
        ParticipantId::random(),
        ParticipantId::random(),
        ParticipantId::random(),
    );
    let mut events = vec![
        outbox_event(&account, a, 1),
        outbox_event(&account, b, 1),
        outbox_event(&account, c, 1),
    ];
    for e in &mut events {
        e.created_at_ms = 10;
    }
    store.outbox_append(&events).await.expect("append");
    let due = due_of(&store, &account, 100).await;
    let find = |p: ParticipantId| {
        due.iter()
            .find(|e| e.event.participant == p)
            .expect("due")
            .clone()
    };
    // a: delivered at 200; b: given up at 1_400 (after the cutoff); c: still pending.
    let (ea, eb, ec) = (find(a), find(b), find(c));
    store
        .outbox_attempted(
            &ea,
            &attempt(&ea, Some(204), 200),
            AttemptOutcome::Delivered,
            CLAIMANT,
        )
        .await
        .expect("attempted");
    store
        .outbox_attempted(
            &eb,
            &attempt(&eb, None, 1_400),
            AttemptOutcome::GaveUp,
            CLAIMANT,
        )
        .await
        .expect("attempted");
    store
        .outbox_attempted(
            &ec,
            &attempt(&ec, Some(500), 300),
            AttemptOutcome::RetryAt(350),
            CLAIMANT,
        )
        .await
        .expect("attempted");
    // One row of each table at a time: a's event, then the attempts of a and c (both before
    // the cutoff); never c's pending event nor anything of b.
    let mut gone = 0;
    for _ in 0..10 {
        let n = store.prune_webhooks(1_000, 1).await.expect("prune");
        assert!(n <= 2, "at most one row of each table: {n}");
        if n == 0 {
            break;
        }
        gone += n;
    }
    assert!(gone >= 3, "a's event and the two old attempts went: {gone}");
    assert!(store
        .delivery_log(&account, a, 10)
        .await
        .expect("log")
        .is_empty());
    assert!(store
        .delivery_log(&account, c, 10)
        .await
        .expect("log")
        .is_empty());
    assert_eq!(
        store
            .delivery_log(&account, b, 10)
            .await
            .expect("log")
            .len(),
        1
    );
    let due = due_of(&store, &account, 400).await;
    assert_eq!(due.len(), 1, "c's pending event stays");
    assert_eq!(due[0].event.participant, c);
}

/// A rotated webhook secret: due events carry the new secret, and the previous one only
/// while its grace lasts (judged at the time they are read); a rotation without grace drops
/// the previous one; an unknown account is refused.
pub async fn webhook_secret_rotation(store: TestStore) {
    let account = new_account(&store).await;
    store
        .account_webhooks(&account, "whsec_old")
        .await
        .expect("secret");
    let p = ParticipantId::random();
    store
        .outbox_append(&[outbox_event(&account, p, 1)])
        .await
        .expect("append");
    store
        .rotate_webhook_secret(&account, "whsec_new", Some(9_000))
        .await
        .expect("rotate");
    assert_eq!(
        store
            .account_webhooks(&account, "whsec_x")
            .await
            .expect("settings")
            .secret,
        "whsec_new"
    );
    let due = due_of(&store, &account, 8_000).await;
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].secret.as_str(), due[0].previous_secret.as_deref()),
        ("whsec_new", Some("whsec_old")),
        "in the grace"
    );
    let due = due_of(&store, &account, 9_000).await;
    assert_eq!(due[0].previous_secret, None, "the grace is over");
    store
        .rotate_webhook_secret(&account, "whsec_newer", None)
        .await
        .expect("rotate");
    let due = due_of(&store, &account, 8_000).await;
    assert_eq!(
        (due[0].secret.as_str(), due[0].previous_secret.as_deref()),
        ("whsec_newer", None),
        "no grace: the previous secret is gone at once"
    );
    let missing = AccountId::parse("nobody-here").expect("id");
    assert!(matches!(
        store.rotate_webhook_secret(&missing, "whsec_z", None).await,
        Err(StoreError::AccountNotFound)
    ));
}

/// A two-line layout (channels, one audio track of `publisher`).
fn layout(unique_id: &str, revision: u64, publisher: ParticipantId) -> SubscribeLayout {
    SubscribeLayout {
        unique_id: unique_id.into(),
        revision,
        lines: vec![
            LayoutLine {
                mid: "0".into(),
                content: LineContent::Channels,
            },
            LayoutLine {
                mid: "1".into(),
                content: LineContent::Track {
                    kind: MediaKind::Audio,
                    publisher,
                    stream: StreamId::parse("mic").expect("stream id"),
                    msid: "s1".into(),
                    track_id: "audio-1".into(),
                    sending: true,
                },
            },
        ],
    }
}

/// A device's subscribe layout: kept per participant, a lower revision of the same SDK
/// instance never overwrites a higher one, another instance's replaces it, forgotten only for
/// the instance named, and gone with the participant (or never kept for one that is gone).
/// Its publish connection's credentials likewise. A phone call's record is replaced by the
/// participant's next call, forgotten only for the call named, and kept when the participant
/// is deleted.
pub async fn subscribe_layouts(store: TestStore) {
    let account = new_account(&store).await;
    let subscriber = new_participant(&store, &account).await;
    let publisher = new_participant(&store, &account).await;
    let stored = || async { store.subscribe_layout(subscriber).await.expect("read") };
    let save = |layout: SubscribeLayout| {
        let store = store.clone();
        async move {
            store
                .save_subscribe_layout(subscriber, &layout)
                .await
                .expect("save (a deleted participant is no error)")
        }
    };
    assert_eq!(stored().await, None);

    let first = layout("sdk-a", 3, publisher);
    save(first.clone()).await;
    assert_eq!(stored().await, Some(first.clone()));
    let mut older = layout("sdk-a", 2, publisher);
    older.lines.truncate(1);
    save(older).await;
    assert_eq!(
        stored().await,
        Some(first.clone()),
        "a lower revision of the same instance is stale"
    );
    let other = layout("sdk-b", 1, publisher);
    save(other.clone()).await;
    assert_eq!(
        stored().await,
        Some(other.clone()),
        "another instance's replaces it"
    );
    for (instance, left) in [("sdk-a", Some(other)), ("sdk-b", None)] {
        store
            .forget_subscribe_layout(subscriber, instance)
            .await
            .expect("forget");
        assert_eq!(stored().await, left, "forgetting {instance}");
    }

    // The publish connection's credentials: kept, replaced, forgotten with the instance.
    let credentials = |unique_id: &str, ufrag: &str| PublishCredentials {
        participant: subscriber,
        unique_id: unique_id.into(),
        ufrag: ufrag.into(),
        pwd: format!("pwd-of-{ufrag}"),
    };
    let mine = || async {
        store
            .publish_credentials()
            .await
            .expect("read")
            .into_iter()
            .filter(|c| c.participant == subscriber)
            .collect::<Vec<_>>()
    };
    for c in [credentials("sdk-c", "uf1"), credentials("sdk-c", "uf2")] {
        store.save_publish_credentials(&c).await.expect("save");
    }
    assert_eq!(
        mine().await,
        vec![credentials("sdk-c", "uf2")],
        "the last ones"
    );
    store
        .forget_subscribe_layout(subscriber, "sdk-c")
        .await
        .expect("forget");
    assert!(mine().await.is_empty());

    // A phone call's record: replaced by the participant's next call, forgotten only for
    // the call named.
    let calls = || async {
        store
            .phone_calls()
            .await
            .expect("read")
            .into_iter()
            .filter(|c| c.participant == subscriber)
            .map(|c| (c.call, c.record))
            .collect::<Vec<_>>()
    };
    for (call, record) in [("sip-1", "{\"a\":1}"), ("sip-2", "{\"a\":2}")] {
        store
            .save_phone_call(subscriber, call, record)
            .await
            .expect("save");
    }
    assert_eq!(calls().await, vec![("sip-2".into(), "{\"a\":2}".into())]);
    store
        .forget_phone_call(subscriber, "sip-1")
        .await
        .expect("forget another call");
    assert_eq!(
        calls().await.len(),
        1,
        "an older call's end keeps the newer"
    );
    // Taken (by its owner's successor) or ended (by a process that finds it orphaned) only
    // as read: of the two, the first wins, and the loser learns it.
    let stamp = || async {
        store
            .phone_calls()
            .await
            .expect("read")
            .into_iter()
            .find(|c| c.participant == subscriber)
            .map(|c| c.updated_at_ms)
            .expect("stored")
    };
    let read = stamp().await;
    assert!(
        !store
            .take_phone_call(subscriber, "sip-1", read, read + 5)
            .await
            .expect("take another call"),
        "another call is not taken"
    );
    assert!(store
        .take_phone_call(subscriber, "sip-2", read, read)
        .await
        .expect("take"));
    let taken = stamp().await;
    assert!(
        taken > read,
        "a take stamps later than the read ({read} -> {taken})"
    );
    assert!(
        !store
            .end_phone_call(subscriber, "sip-2", read)
            .await
            .expect("end as read before the take"),
        "the take wins over an end as read before it"
    );
    assert!(
        !store
            .take_phone_call(subscriber, "sip-2", read, taken + 5)
            .await
            .expect("take again as read before"),
        "a second take as read before the first loses"
    );
    assert!(store
        .end_phone_call(subscriber, "sip-2", taken)
        .await
        .expect("end"));
    assert!(calls().await.is_empty());
    assert!(
        !store
            .take_phone_call(subscriber, "sip-2", taken, taken + 5)
            .await
            .expect("take an ended call"),
        "an ended call is not taken"
    );
    store
        .forget_phone_call(subscriber, "sip-2")
        .await
        .expect("forget an ended call");

    save(first.clone()).await;
    store
        .save_publish_credentials(&credentials("sdk-a", "uf3"))
        .await
        .expect("save");
    store
        .save_phone_call(subscriber, "sip-3", "{}")
        .await
        .expect("save");
    store
        .delete_participant(&account, subscriber)
        .await
        .expect("delete");
    assert_eq!(stored().await, None, "gone with the participant");
    assert!(mine().await.is_empty(), "gone with the participant");
    assert_eq!(
        calls().await.len(),
        1,
        "a call outlives its participant's deletion (the next process sends its BYE)"
    );
    store
        .forget_phone_call(subscriber, "sip-3")
        .await
        .expect("forget");
    save(first).await;
    store
        .save_publish_credentials(&credentials("sdk-a", "uf4"))
        .await
        .expect("saving for a deleted participant is not an error");
    assert_eq!(stored().await, None, "never kept for a deleted participant");
    assert!(
        mine().await.is_empty(),
        "never kept for a deleted participant"
    );
}

/// Sessions are listed by age for the cleanup.
pub async fn sessions_by_age(store: TestStore) {
    let account = new_account(&store).await;
    let session = new_session(&store, &account).await;
    let mine = |list: Vec<(AccountId, SessionId)>| {
        list.into_iter()
            .filter(|(a, _)| *a == account)
            .map(|(_, s)| s)
            .collect::<Vec<_>>()
    };
    let later = super::epoch_ms() + 60_000;
    assert_eq!(
        mine(
            store
                .sessions_created_before(later, 100_000)
                .await
                .expect("old")
        ),
        vec![session]
    );
    assert!(mine(
        store
            .sessions_created_before(0, 100_000)
            .await
            .expect("old")
    )
    .is_empty());
}

/// Participants by creation time, for the optional participant expiry: oldest first, none
/// created before the epoch.
pub async fn participants_by_age(store: TestStore) {
    let account = new_account(&store).await;
    let (first, second) = (
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
    );
    let mine = |list: Vec<(AccountId, ParticipantId)>| {
        list.into_iter()
            .filter(|(a, _)| *a == account)
            .map(|(_, p)| p)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let later = super::epoch_ms() + 60_000;
    assert_eq!(
        mine(
            store
                .participants_created_before(later, 100_000)
                .await
                .expect("old")
        ),
        [first, second].into_iter().collect()
    );
    assert!(mine(
        store
            .participants_created_before(0, 100_000)
            .await
            .expect("old")
    )
    .is_empty());
}

/// The operator's view: account and session summaries, credential replacement, secrets set
/// and removed together, and live state: written per process, read with the process's last
/// heartbeat, a process that stopped beating claimed by one other at a time and forgotten by
/// it, forgotten on a clean stop.
pub async fn operator(store: TestStore) {
    use super::{LiveChange, LiveStream, STALE_AFTER_MS};
    use crate::domain::StreamId;
    let account = new_account(&store).await;
    let session = new_session(&store, &account).await;
    let (a, b) = (
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
    );
    store
        .add_member(&account, session, a, None)
        .await
        .expect("add a");
    let mine = store.accounts().await.expect("accounts");
    let mine = mine.iter().find(|s| s.account == account).expect("listed");
    assert_eq!((mine.sessions, mine.participants), (1, 2));
    let sessions = store
        .session_summaries(Some(&account))
        .await
        .expect("sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!((sessions[0].session, sessions[0].members), (session, 1));
    assert!(store
        .session_summaries(None)
        .await
        .expect("all sessions")
        .iter()
        .any(|s| s.session == session));

    // Credentials are replaced; the old username no longer finds the account.
    store
        .replace_credentials(&AccountCredentials {
            account: account.clone(),
            username: format!("rotated-{account}"),
            password_sha256: "22".repeat(32),
        })
        .await
        .expect("rotate");
    assert!(store
        .account_by_username(&format!("user-{account}"))
        .await
        .expect("lookup")
        .is_none());
    let other = AccountId::parse("zz-missing").expect("id");
    assert!(matches!(
        store
            .replace_credentials(&AccountCredentials {
                account: other,
                username: format!("x-{account}"),
                password_sha256: "33".repeat(32),
            })
            .await,
        Err(StoreError::AccountNotFound)
    ));

    // Secrets: set and removed in one go.
    let (s1, s2) = (
        format!("op-{}", rand::random::<u64>()),
        format!("op-{}", rand::random::<u64>()),
    );
    store
        .set_secrets(&[(&s1, Some(b"one".to_vec())), (&s2, Some(b"two".to_vec()))])
        .await
        .expect("set");
    store
        .set_secrets(&[(&s1, Some(b"uno".to_vec())), (&s2, None)])
        .await
        .expect("replace");
    assert_eq!(
        store.secret_value(&s1).await.expect("get").as_deref(),
        Some(&b"uno"[..])
    );
    assert_eq!(store.secret_value(&s2).await.expect("get"), None);

    // Live state of two processes; one stops beating and is pruned by the other's heartbeat.
    let (p1, p2) = (
        format!("proc-{}", rand::random::<u64>()),
        format!("proc-{}", rand::random::<u64>()),
    );
    let t0 = 1_000_000_000_000_i64 + i64::from(rand::random::<u16>());
    let mut epochs = Vec::new();
    for (p, address) in [(&p1, "10.0.0.1:8080"), (&p2, "10.0.0.2:8080")] {
        let beaten = store.heartbeat(p, &at(address), t0).await.expect("beat");
        assert_eq!(
            beaten.found,
            super::Beat::Absent,
            "a first beat finds no row"
        );
        assert_eq!(beaten.epoch, t0, "a registration's epoch is its first beat");
        epochs.push(beaten.epoch);
    }
    let (e1, e2) = (epochs[0], epochs[1]);
    let stream = LiveStream {
        participant: a,
        stream: StreamId::parse("s1").expect("stream"),
        alias: Some(StreamAlias::parse("cam").expect("alias")),
        kinds: MediaKinds::ALL,
    };
    for (instance, change) in [
        (
            &p1,
            LiveChange::Connected {
                participant: a,
                device: "d-a".into(),
            },
        ),
        (&p1, LiveChange::Published(stream.clone())),
        (
            &p2,
            LiveChange::Connected {
                participant: b,
                device: "call-b".into(),
            },
        ),
        (
            &p2,
            LiveChange::IsPhone {
                participant: b,
                device: "call-b".into(),
            },
        ),
    ] {
        let epoch = if instance == &p1 { e1 } else { e2 };
        record_live(&store, instance, epoch, t0, change)
            .await
            .expect("record");
    }
    // A write with an epoch that is not the registration's is refused, and writes nothing.
    let refused = record_live(
        &store,
        &p1,
        e1 + 1,
        t0,
        LiveChange::Connected {
            participant: a,
            device: "d-stale".into(),
        },
    )
    .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    // ... with its outbox rows: all or nothing, and a registered writer's are written.
    let stale = super::Writer {
        instance: &p1,
        epoch: e1 + 1,
        now_ms: t0,
    };
    let refused = store
        .record_events(&stale, &[outbox_event(&account, a, 1)], &[], t0)
        .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    assert!(due_of(&store, &account, i64::MAX / 4).await.is_empty());
    let current = super::Writer { epoch: e1, ..stale };
    store
        .record_events(&current, &[outbox_event(&account, a, 2)], &[], t0)
        .await
        .expect("record");
    assert_eq!(due_of(&store, &account, i64::MAX / 4).await.len(), 1);
    let devices = store.live_devices(&[a, b]).await.expect("devices");
    assert_eq!(devices.len(), 2, "{devices:?}");
    let phone = devices
        .iter()
        .find(|d| d.participant == b)
        .expect("b's device");
    assert_eq!(
        (phone.kind, phone.instance.as_str(), phone.instance_seen_ms),
        (super::DeviceKind::Phone, p2.as_str(), t0)
    );
    assert_eq!(
        store.live_streams(&[a, b]).await.expect("streams"),
        vec![stream.clone()]
    );
    assert!(store.live_devices(&[]).await.expect("none").is_empty());

    // p2 stops beating: the processes alive claim it, one at a time, and read what it holds.
    let ours = |claimed: Vec<String>| -> Vec<String> {
        claimed
            .into_iter()
            .filter(|i| *i == p1 || *i == p2)
            .collect()
    };
    let later = t0 + 20_000;
    assert_eq!(
        store
            .heartbeat(&p1, &at("10.0.0.1:8080"), later)
            .await
            .expect("beat"),
        super::Beaten {
            found: super::Beat::Alive,
            epoch: e1
        },
        "a beat keeps the registration"
    );
    assert!(
        ours(
            store
                .claim_dead_instances(&p1, t0 + 1, Some(t0 + 1), later, later + 1_000)
                .await
                .expect("claim")
        )
        .is_empty(),
        "a process last seen before the claimant's start is left for later (its devices may \
         still resume on the claimant)"
    );
    assert_eq!(
        ours(
            store
                .claim_dead_instances(&p1, t0 + 1, Some(t0), later, later + 1_000)
                .await
                .expect("claim")
        ),
        vec![p2.clone()],
        "p1 claims p2, never itself"
    );
    assert!(
        ours(
            store
                .claim_dead_instances("proc-other", t0 + 1, None, later, later + 1_000)
                .await
                .expect("claim")
        )
        .is_empty(),
        "a claimed process is not claimed again while the claim lasts"
    );
    assert_eq!(
        ours(
            store
                .claim_dead_instances("proc-other", t0 + 1, None, later + 1_000, later + 2_000)
                .await
                .expect("claim")
        ),
        vec![p2.clone()],
        "an unfinished claim is taken again once it ends"
    );
    assert_eq!(
        store
            .heartbeat(&p2, &at("10.0.0.2:8080"), t0)
            .await
            .expect("beat")
            .found,
        super::Beat::Claimed,
        "a process taken for dead learns it at its next beat"
    );
    // ... and its writes are refused while it is claimed: the fence.
    let refused = record_live(
        &store,
        &p2,
        e2,
        later,
        LiveChange::Connected {
            participant: b,
            device: "late".into(),
        },
    )
    .await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    let held = store.instance_devices(&p2).await.expect("devices of p2");
    assert_eq!(
        held.iter()
            .map(|d| (d.participant, d.device.as_str(), d.kind))
            .collect::<Vec<_>>(),
        vec![(b, "call-b", super::DeviceKind::Phone)]
    );

    // Beating never removes a dead process's rows, however old (nobody would tell its
    // devices' backends): its claimant does, once it has written their ends.
    store
        .heartbeat(&p1, &at("10.0.0.1:8080"), t0 + STALE_AFTER_MS + 1)
        .await
        .expect("beat");
    assert_eq!(store.live_devices(&[a, b]).await.expect("devices").len(), 2);
    store.forget_instance(&p2).await.expect("forget p2");
    let devices = store.live_devices(&[a, b]).await.expect("devices");
    assert_eq!(
        devices.iter().map(|d| d.participant).collect::<Vec<_>>(),
        vec![a]
    );
    // Its row gone, its writes stay refused; beating again registers it anew (a new epoch),
    // and only writes with that epoch are taken.
    let gone = LiveChange::Disconnected {
        participant: a,
        device: "d-a".into(),
    };
    let refused = record_live(&store, &p2, e2, later, gone.clone()).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    let again = store
        .heartbeat(&p2, &at("10.0.0.2:8080"), later)
        .await
        .expect("beat");
    assert_eq!(again.found, super::Beat::Absent);
    assert_ne!(again.epoch, e2, "a new registration, a new epoch");
    let refused = record_live(&store, &p2, e2, later, gone.clone()).await;
    assert!(matches!(refused, Err(StoreError::Fenced)), "{refused:?}");
    // A disconnection recorded by another process does not remove p1's device.
    record_live(&store, &p2, again.epoch, later, gone)
        .await
        .expect("record");
    assert_eq!(store.live_devices(&[a]).await.expect("devices").len(), 1);
    store.forget_instance(&p2).await.expect("forget p2");
    record_live(
        &store,
        &p1,
        e1,
        later,
        LiveChange::Unpublished {
            participant: a,
            stream: stream.stream.clone(),
        },
    )
    .await
    .expect("record");
    assert!(store.live_streams(&[a]).await.expect("streams").is_empty());
    store.forget_instance(&p1).await.expect("forget");
    assert!(store
        .live_devices(&[a, b])
        .await
        .expect("devices")
        .is_empty());
}

/// Records one change of `instance`'s live state as its registration `epoch` at `now_ms`.
async fn record_live(
    store: &TestStore,
    instance: &str,
    epoch: i64,
    now_ms: i64,
    change: super::LiveChange,
) -> Result<(), StoreError> {
    let writer = super::Writer {
        instance,
        epoch,
        now_ms,
    };
    store.record_events(&writer, &[], &[change], now_ms).await
}

fn at(http: &str) -> super::InstanceRecord {
    super::InstanceRecord {
        http: http.into(),
        cluster: Some(format!("ws://{http}")),
        sip: None,
        draining: false,
    }
}

/// Six placements of `session` at once, by the two candidates in turn, alive at `now_ms`: the
/// hosts and epochs they got.
async fn place_at_once(
    store: &TestStore,
    session: SessionId,
    candidates: [&String; 2],
    now_ms: i64,
) -> std::collections::BTreeSet<(String, i64)> {
    let mut tasks = Vec::new();
    for i in 0..6 {
        let store = store.clone();
        let candidate = candidates[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            store
                .place_session(session, &candidate, None, now_ms - 20_000, now_ms)
                .await
                .expect("place")
        }));
    }
    let mut hosts = std::collections::BTreeSet::new();
    for t in tasks {
        let h = t.await.expect("task");
        hosts.insert((h.instance, h.epoch));
    }
    hosts
}

/// Sessions' hosts: placed once, kept while the host lives, taken over from a dead host (the
/// epoch grows), released only by the host, and one host for processes placing at once.
pub async fn session_placement(store: TestStore) {
    let (p1, p2) = (
        format!("proc-{}", rand::random::<u64>()),
        format!("proc-{}", rand::random::<u64>()),
    );
    let t0 = 1_000_000_000_000_i64 + i64::from(rand::random::<u16>());
    let alive_since = t0 - 20_000;
    store
        .heartbeat(&p1, &at("10.0.0.1:8080"), t0)
        .await
        .expect("beat");
    store
        .heartbeat(&p2, &at("10.0.0.2:8080"), t0)
        .await
        .expect("beat");
    let session = SessionId::random();
    assert_eq!(store.session_host(session).await.expect("read"), None);
    // The database's clock, in epoch milliseconds (the database runs on this machine: its
    // clock is this one's, give or take the round trip).
    let local = crate::store::epoch_ms();
    let db = store.clock_ms().await.expect("clock");
    assert!(
        (db - local).abs() < 60_000,
        "the database's clock {db} is epoch milliseconds like {local}"
    );

    let first = store
        .place_session(session, &p1, None, alive_since, t0)
        .await
        .expect("place");
    assert_eq!(
        (first.instance.as_str(), first.epoch),
        (p1.as_str(), 1),
        "a session with no host is placed on the candidate"
    );
    assert_eq!(first.cluster_address.as_deref(), Some("ws://10.0.0.1:8080"));
    let again = store
        .place_session(session, &p2, None, alive_since, t0)
        .await
        .expect("place");
    assert_eq!(again, first, "a live host keeps its session");
    assert!(!store
        .release_session(session, &p2, i64::MAX)
        .await
        .expect("release"));
    assert_eq!(
        store.session_host(session).await.expect("read"),
        Some(first.clone())
    );
    assert_eq!(
        store.idle_sessions(&p1, t0 + 1).await.expect("idle"),
        vec![session],
        "a session with no member's device on its host is idle"
    );
    assert!(
        store.idle_sessions(&p1, t0).await.expect("idle").is_empty(),
        "placed too recently"
    );

    // p1 stops beating: p2 takes its session over, and p1's late release changes nothing.
    let later = t0 + 30_000;
    store
        .heartbeat(&p2, &at("10.0.0.2:8080"), later)
        .await
        .expect("beat");
    let loads = store
        .instance_loads(later - 20_000, later)
        .await
        .expect("loads");
    assert!(loads.iter().any(|l| l.instance == p2 && !l.draining));
    assert!(
        !loads.iter().any(|l| l.instance == p1),
        "a dead process is not a candidate"
    );
    let taken = store
        .place_session(session, &p2, None, later - 20_000, later)
        .await
        .expect("place");
    assert_eq!((taken.instance.as_str(), taken.epoch), (p2.as_str(), 2));
    assert!(!store
        .release_session(session, &p1, i64::MAX)
        .await
        .expect("release"));
    // A placement used since the cut-off is not released; confirming stamps it.
    assert!(!store
        .release_session(session, &p2, later)
        .await
        .expect("release"));
    assert!(store
        .confirm_session(session, &p2, later + 5_000)
        .await
        .expect("confirm"));
    assert!(!store
        .confirm_session(session, &p1, later + 5_000)
        .await
        .expect("confirm"));
    assert!(!store
        .release_session(session, &p2, later + 5_000)
        .await
        .expect("release"));
    assert!(store
        .release_session(session, &p2, later + 5_001)
        .await
        .expect("release"));
    assert_eq!(store.session_host(session).await.expect("read"), None);
    assert!(!store
        .confirm_session(session, &p2, later + 6_000)
        .await
        .expect("confirm"));

    // A live host named as replaced (its successor on the same address) loses the session.
    let s5 = SessionId::random();
    store
        .place_session(s5, &p2, None, later - 20_000, later)
        .await
        .expect("place");
    let successor = format!("proc-{}", rand::random::<u64>());
    let kept = store
        .place_session(s5, &successor, Some(p1.as_str()), later - 20_000, later)
        .await
        .expect("place");
    assert_eq!(kept.instance, p2, "only the process named as replaced is");
    let replaced = store
        .place_session(s5, &successor, Some(p2.as_str()), later - 20_000, later)
        .await
        .expect("place");
    assert_eq!(
        (replaced.instance.as_str(), replaced.epoch),
        (successor.as_str(), 2)
    );

    let mut draining = at("10.0.0.2:8080");
    draining.draining = true;
    store.heartbeat(&p2, &draining, later).await.expect("beat");
    let loads = store
        .instance_loads(later - 20_000, later)
        .await
        .expect("loads");
    assert!(
        loads.iter().any(|l| l.instance == p2 && l.draining),
        "a draining process says so"
    );

    // A claimed process is dead to placement too, however recent its last beat.
    let s2 = SessionId::random();
    store
        .place_session(s2, &p2, None, later - 20_000, later)
        .await
        .expect("place");
    store
        .claim_dead_instances(&p1, later + 1, None, later, later + 60_000)
        .await
        .expect("claim");
    let moved = store
        .place_session(s2, &p1, None, later - 20_000, later)
        .await
        .expect("place");
    assert_eq!(
        moved.instance, p1,
        "a host claimed for dead loses its sessions"
    );
    // Forgetting a process removes its placements.
    store.forget_instance(&p1).await.expect("forget");
    assert_eq!(store.session_host(s2).await.expect("read"), None);

    // Live processes placing one session at once agree on one host.
    let (p1, p2) = (
        format!("proc-{}", rand::random::<u64>()),
        format!("proc-{}", rand::random::<u64>()),
    );
    let e1 = store
        .heartbeat(&p1, &at("10.0.0.3:8080"), later)
        .await
        .expect("beat")
        .epoch;
    let e2 = store
        .heartbeat(&p2, &at("10.0.0.4:8080"), later)
        .await
        .expect("beat")
        .epoch;
    let s3 = SessionId::random();
    let hosts = place_at_once(&store, s3, [&p1, &p2], later).await;
    assert_eq!(hosts.len(), 1, "one host: {hosts:?}");
    // ... and taking over from a dead host at once, they agree on one successor.
    let dead = format!("proc-{}", rand::random::<u64>());
    store
        .heartbeat(&dead, &at("10.0.0.5:8080"), later - 60_000)
        .await
        .expect("beat");
    let s6 = SessionId::random();
    store
        .place_session(s6, &dead, None, later - 80_000, later - 60_000)
        .await
        .expect("place");
    let successors = place_at_once(&store, s6, [&p1, &p2], later).await;
    assert_eq!(successors.len(), 1, "one successor: {successors:?}");
    assert_eq!(successors.first().map(|(_, e)| *e), Some(2));
    store.forget_instance(&dead).await.expect("forget");

    // A session whose member has a device on its host is not idle.
    let account = new_account(&store).await;
    let s4 = new_session(&store, &account).await;
    let member = new_participant(&store, &account).await;
    store
        .add_member(&account, s4, member, None)
        .await
        .expect("member");
    store
        .place_session(s4, &p2, None, later - 20_000, later)
        .await
        .expect("place");
    let connected = super::LiveChange::Connected {
        participant: member,
        device: "d-1".into(),
    };
    record_live(&store, &p2, e2, later, connected.clone())
        .await
        .expect("record");
    assert!(!store
        .idle_sessions(&p2, later + 1)
        .await
        .expect("idle")
        .contains(&s4));
    // ... and is idle once that device is gone (or elsewhere).
    record_live(&store, &p1, e1, later, connected)
        .await
        .expect("record");
    assert!(store
        .idle_sessions(&p2, later + 1)
        .await
        .expect("idle")
        .contains(&s4));
    store.forget_instance(&p1).await.expect("forget");
    store.forget_instance(&p2).await.expect("forget");
}

/// A duty is held by one process at a time: taken when free or lapsed, renewed by its holder,
/// refused to others while its lease lasts, and released with its holder's row.
pub async fn cluster_duties(store: TestStore) {
    let duty = format!("duty-{}", rand::random::<u64>());
    let (p1, p2) = (
        format!("proc-{}", rand::random::<u64>()),
        format!("proc-{}", rand::random::<u64>()),
    );
    let t0 = 1_000_000_000_000_i64;
    let take = |holder: &str, now: i64| {
        let (store, duty, holder) = (store.clone(), duty.clone(), holder.to_owned());
        async move {
            store
                .take_duty(&duty, &holder, now, now + 1_000)
                .await
                .expect("take")
        }
    };
    assert!(take(&p1, t0).await, "a free duty is taken");
    assert!(!take(&p2, t0 + 500).await, "not while another holds it");
    assert!(take(&p1, t0 + 900).await, "its holder renews it");
    assert!(!take(&p2, t0 + 1_800).await, "the renewal lasts");
    assert!(take(&p2, t0 + 2_000).await, "a lapsed duty is taken over");
    assert!(!take(&p1, t0 + 2_100).await, "by one process");
    // Asked at once, one process gets it.
    let later = t0 + 10_000;
    let (a, b) = tokio::join!(take(&p1, later), take(&p2, later + 1));
    assert_eq!(u8::from(a) + u8::from(b), 1, "one of two: {a} {b}");
    // A process's duties go with its row.
    let holder = if a { &p1 } else { &p2 };
    let other = if a { &p2 } else { &p1 };
    store.forget_instance(holder).await.expect("forget");
    assert!(
        take(other, later + 2).await,
        "free once its holder is forgotten"
    );
    store.forget_instance(other).await.expect("forget");
}

/// What a process measured of its devices' media quality (issue 21): replaced whole by each
/// write of its process, readable per participant with the process's last beat, gone with the
/// process's other rows, and never written for a process whose row is gone.
pub async fn live_quality(store: TestStore) {
    let account = new_account(&store).await;
    let (a, b, c) = (
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
        new_participant(&store, &account).await,
    );
    let (p1, p2) = (
        format!("proc-{}", rand::random::<u64>()),
        format!("proc-{}", rand::random::<u64>()),
    );
    let t0 = 1_000_000_000_000_i64 + i64::from(rand::random::<u16>());
    for p in [&p1, &p2] {
        store
            .heartbeat(p, &at("10.0.0.9:8080"), t0)
            .await
            .expect("beat");
    }
    store
        .record_quality(
            &p1,
            &[(a, r#"{"n":1}"#.into()), (b, r#"{"n":2}"#.into())],
            t0,
        )
        .await
        .expect("record");
    store
        .record_quality(&p2, &[(c, r#"{"n":3}"#.into())], t0 + 1)
        .await
        .expect("record");
    let read = store.live_quality(&[a, b, c]).await.expect("read");
    let mut got: Vec<_> = read
        .iter()
        .map(|q| {
            (
                q.participant,
                q.instance.clone(),
                q.summary.clone(),
                q.measured_at_ms,
            )
        })
        .collect();
    got.sort();
    let mut want = vec![
        (a, p1.clone(), r#"{"n":1}"#.to_owned(), t0),
        (b, p1.clone(), r#"{"n":2}"#.to_owned(), t0),
        (c, p2.clone(), r#"{"n":3}"#.to_owned(), t0 + 1),
    ];
    want.sort();
    assert_eq!(got, want);
    assert!(read.iter().all(|q| q.instance_seen_ms == t0), "{read:?}");
    // A process's next write replaces its rows: b's device is gone from p1, a's was measured again.
    store
        .record_quality(&p1, &[(a, r#"{"n":4}"#.into())], t0 + 2)
        .await
        .expect("record");
    let read = store.live_quality(&[a, b]).await.expect("read");
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(
        (read[0].participant, read[0].summary.as_str()),
        (a, r#"{"n":4}"#)
    );
    assert_eq!(read[0].measured_at_ms, t0 + 2);
    // Forgetting a process removes its rows; a forgotten process writes nothing any more.
    store.forget_instance(&p2).await.expect("forget");
    assert!(store.live_quality(&[c]).await.expect("read").is_empty());
    store
        .record_quality(&p2, &[(c, r#"{"n":5}"#.into())], t0 + 3)
        .await
        .expect("a write of a forgotten process is no error");
    assert!(store.live_quality(&[c]).await.expect("read").is_empty());
    assert!(store.live_quality(&[]).await.expect("read").is_empty());
    store.forget_instance(&p1).await.expect("forget");
    assert!(store.live_quality(&[a]).await.expect("read").is_empty());
}
