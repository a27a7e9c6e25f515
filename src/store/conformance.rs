//! The conformance suite every [`Store`] adapter must pass.
//!
//! Each case is a public async function taking a fresh handle on the store under test; it
//! panics on failure. `tests/store/main.rs` runs every case against SQLite and PostgreSQL.
//! Cases create their own account (random id), so they can share one database and run
//! concurrently.
#![allow(clippy::disallowed_methods)] // a test suite: concurrent requests need tasks

use std::sync::Arc;

use super::{AccountCredentials, Store, StoreError};
use crate::domain::{
    AccountId, CallbackUrl, DeviceApiVersion, MediaKinds, Participant, ParticipantId,
    ParticipantSubscription, Session, SessionId, StreamAlias, Subscriptions, Tag,
    MAX_SESSION_MEMBERS,
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
