//! Real test databases: a temp SQLite file, a fresh PostgreSQL database per test process.

use std::sync::OnceLock;

/// The PostgreSQL server the tests use (`PATCHBAY_TEST_POSTGRES`, default: the local `test`
/// database with trust auth). Tests fail, never skip, when it is unreachable.
pub fn postgres_admin_url() -> String {
    std::env::var("PATCHBAY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A database created for this test process, shared by its tests (they isolate by account).
pub fn postgres_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(fresh_postgres_url).clone()
}

/// A new, empty PostgreSQL database of the caller's own.
pub fn fresh_postgres_url() -> String {
    let admin = postgres_admin_url();
    let name = format!("patchbay_test_{:016x}", rand::random::<u64>());
    let create = format!("CREATE DATABASE {name}");
    let admin2 = admin.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin2)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin2} is required: {e}"));
            sqlx::Executor::execute(&mut conn, create.as_str())
                .await
                .expect("create test database");
        })
    })
    .join()
    .expect("create database thread");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// A fresh SQLite database file URL in the temp directory.
pub fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("patchbay-test-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!("sqlite://{}/patchbay.db?mode=rwc", dir.display())
}
