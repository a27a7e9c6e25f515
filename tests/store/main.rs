//! The store conformance suite (`patchbay::store::conformance`) on SQLite and on PostgreSQL.

use patchbay_testkit::db as common;

use std::sync::Arc;

use patchbay::store::{conformance, SqlStore, Store};

async fn sqlite() -> conformance::TestStore {
    Arc::new(
        SqlStore::open(&common::sqlite_url())
            .await
            .expect("open sqlite"),
    )
}

async fn postgres() -> conformance::TestStore {
    Arc::new(
        SqlStore::open(&common::postgres_url())
            .await
            .expect("open postgres"),
    )
}

macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    patchbay::store::conformance::$case(super::$backend().await).await;
                }
            )*

            #[test]
            fn every_case_is_listed() {
                let here = [$(stringify!($case)),*];
                assert_eq!(&here[..], patchbay::store::conformance::CASES);
            }
        }
    };
}

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        suite!(sqlite: $($case),*);
        suite!(postgres: $($case),*);
    };
}

both!(
    accounts,
    secrets,
    sessions,
    participants,
    membership,
    member_cap,
    concurrent_member_cap,
    concurrent_moves,
    subscriptions,
    batch_subscriptions_are_atomic,
    deleting_a_publisher_prunes_subscriptions,
    webhook_settings,
    webhook_outbox,
    webhook_outbox_turns,
    webhook_outbox_claims,
    webhook_retention,
    webhook_secret_rotation,
    sessions_by_age,
    participants_by_age,
    operator,
    subscribe_layouts,
    session_placement,
    cluster_duties,
    live_quality,
);

/// State written through one handle is there for a new process-like handle on the same file.
#[tokio::test]
async fn sqlite_state_survives_reopen() {
    use patchbay::domain::*;
    let url = common::sqlite_url();
    let store = SqlStore::open(&url).await.expect("open");
    let account = AccountId::parse("reopen").expect("id");
    store
        .create_account(&patchbay::store::AccountCredentials {
            account: account.clone(),
            username: "reopen".into(),
            password_sha256: "ab".repeat(32),
        })
        .await
        .expect("account");
    let session = Session {
        id: SessionId::random(),
        account: account.clone(),
        tag: None,
    };
    store.create_session(&session).await.expect("session");
    drop(store);
    let again = SqlStore::open(&url).await.expect("reopen");
    assert_eq!(
        again.session(&account, session.id).await.expect("get"),
        Some(session)
    );
}
