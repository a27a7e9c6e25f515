//! Input hygiene and credentials (issue 9): control characters in free text are 400s naming
//! the field on both backends, the token-carrying response is not cached, failed Basic
//! authentication is rate-limited per username and per source address, and the embedded
//! database's directory and files are private.

use std::net::SocketAddr;

use patchbay::api::{router, AppState, AuthFailureLimits, AuthFailures};
use patchbay::app::App;
use patchbay::config::ServeConfig;

use super::*;

/// Texts that hold a control character, and a name for each.
const CONTROL_TEXTS: [(&str, &str); 5] = [
    ("NUL", "a\u{0}b"),
    ("BEL", "\u{7}"),
    ("newline", "two\nlines"),
    ("DEL", "x\u{7f}"),
    ("C1", "c1\u{85}"),
];

async fn control_characters_are_refused(server: &Server, acct: &Account) {
    let api = server.api(acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    api.put(&format!("/sessions/{s}/participants/{p}"), Body::None)
        .await
        .no_content();
    for (name, text) in CONTROL_TEXTS {
        let what = format!("{name}: {text:?}");
        let m = api
            .post("/participants", Body::Json(json!({"tag": text})))
            .await
            .bad_request(&["tag", "control character"]);
        assert!(!m.contains("callbackUrl"), "{what}: {m}");
        api.post("/sessions", Body::Json(json!({"tag": text})))
            .await
            .bad_request(&["tag", "control character"]);
        api.post(
            "/participants",
            Body::Json(json!({"callbackUrl": format!("https://example.com/{text}")})),
        )
        .await
        .bad_request(&["callbackUrl", "control character"]);
        let rules = json!({"participants": [{"participantId": p, "streamAliases": [text]}]});
        api.put(
            &format!("/sessions/{s}/participants/{p}/subscriptions"),
            Body::Json(rules),
        )
        .await
        .bad_request(&["streamAliases", "control character"]);
    }
    // The same text without the control character is fine, and nothing invalid was stored.
    let (ok, _) = api
        .create_participant_with(Body::Json(
            json!({"tag": "ab", "callbackUrl": "https://example.com/ab"}),
        ))
        .await;
    assert_eq!(ok["tag"], json!("ab"));
    assert_eq!(api.get_participant(&p).await["tag"], Value::Null);
    api.still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_text_are_400_naming_the_field_sqlite() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    control_characters_are_refused(&server, &acct).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_in_text_are_400_naming_the_field_postgres() {
    let server = Server::start(&common::postgres_url()).await;
    let acct = server.account(&unique_account("nul")).await;
    control_characters_are_refused(&server, &acct).await;
    server.stop().await;
}

/// Issue 23: a mistyped field is a 400 that names it and the field meant, on every body, and
/// nothing is created or changed; the read-only fields of the SDKs' models pass when empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_fields_are_400_naming_the_field_meant() {
    let server = Server::sqlite().await;
    let acct = server.account("typo").await;
    let api = server.api(&acct, "/v1");
    let s = api.session().await;
    let p = api.participant().await;
    api.put(&format!("/sessions/{s}/participants/{p}"), Body::None)
        .await
        .no_content();
    let before = api
        .get(&format!("/sessions/{s}/participants"))
        .await
        .ok200()
        .clone();
    api.post(
        "/participants",
        Body::Json(
            json!({"callbackURL": "https://example.com/cb", "publishPermission": ["AUDIO"]}),
        ),
    )
    .await
    .bad_request(&["unknown field `callbackURL`; did you mean `callbackUrl`?"]);
    api.post("/sessions", Body::Json(json!({"Tag": "x"})))
        .await
        .bad_request(&["unknown field `Tag`; did you mean `tag`?"]);
    api.put(
        &format!("/sessions/{s}/participants/{p}/subscriptions"),
        Body::Json(json!({"sessionID": s})),
    )
    .await
    .bad_request(&["unknown field `sessionID`; did you mean `sessionId`?"]);
    api.put(
        &format!("/sessions/{s}/participants/{p}"),
        Body::Json(json!({"participants": [{"participantId": p, "streamAlias": ["cam"]}]})),
    )
    .await
    .bad_request(&["participants[0]: unknown field `streamAlias`; did you mean `streamAliases`?"]);
    api.put(
        &format!("/sessions/{s}/subscriptions"),
        Body::Json(json!({ p.clone(): {"sesionId": s} })),
    )
    .await
    .bad_request(&["unknown field `sesionId`; did you mean `sessionId`?"]);
    api.put(
        "/webhooks",
        Body::Json(json!({"callbackUrls": "https://example.com/x"})),
    )
    .await
    .bad_request(&["unknown field `callbackUrls`"]);
    // Nothing was created or rewired by the refused bodies.
    assert_eq!(
        api.get(&format!("/sessions/{s}/participants"))
            .await
            .ok200(),
        &before
    );
    // The SDKs' models carry read-only fields; empty, they pass; with a value, 400 says why.
    let (created, _) = api
        .create_participant_with(Body::Json(
            json!({"id": null, "sessions": [], "subscriptions": {}, "tag": "round-trip"}),
        ))
        .await;
    assert_eq!(created["tag"], json!("round-trip"));
    api.post(
        "/participants",
        Body::Json(json!({"sessions": [s.clone()]})),
    )
    .await
    .bad_request(&["sessions", "read-only"]);
    api.post("/sessions", Body::Json(json!({"id": "mine"})))
        .await
        .bad_request(&["id", "read-only"]);
    api.still_serving().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_response_carrying_a_device_token_is_not_stored() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    for prefix in PREFIXES {
        let res = server
            .http
            .post(server.url(&format!("{prefix}/accounts/acct/participants")))
            .basic_auth(&acct.user, Some(&acct.pass))
            .send()
            .await
            .expect("create participant");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap_or("")),
            Some("no-store"),
            "{prefix}"
        );
        let body: Value = res.json().await.expect("JSON");
        assert!(body["token"].is_string());
    }
    server.stop().await;
}

/// Sends `GET …/sessions/{random}` with these credentials from `client`; returns the status
/// and the `Retry-After` header.
async fn attempt(
    client: &Client,
    base: &str,
    account: &str,
    user: &str,
    pass: &str,
) -> (StatusCode, Option<u64>, Value) {
    let res = client
        .get(format!(
            "{base}/v1/accounts/{account}/sessions/{}",
            random_uuid()
        ))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .expect("request");
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = res.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentication_is_rate_limited_per_username() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let base = server.url("");
    let budget = AuthFailureLimits::DEFAULT.per_username;
    let wrong = format!("{}x", acct.pass);
    // The whole budget is spent quickly: at 1 refill per 2 s, one more failure at most may
    // be allowed by the time the loop ends (generous for a shared, noisy machine).
    for i in 0..budget {
        let (status, _, _) = attempt(&server.http, &base, "acct", &acct.user, &wrong).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let mut limited = None;
    for _ in 0..3 {
        let (status, retry_after, body) =
            attempt(&server.http, &base, "acct", &acct.user, &wrong).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((retry_after, body));
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (retry_after, body) = limited.expect("a 429 once the budget is spent");
    let retry_after = retry_after.expect("Retry-After on the 429");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    let message = body["error"].as_str().unwrap_or("");
    assert!(message.contains("too many failed authentication"), "{body}");
    assert!(body["requestId"].is_string(), "{body}");
    // The rightful owner of the username is not locked out by someone else's guesses.
    let (status, _, _) = attempt(&server.http, &base, "acct", &acct.user, &acct.pass).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "valid credentials still work"
    );
    // Other usernames are not touched.
    let other = server.account("other").await;
    let (status, _, _) = attempt(&server.http, &base, "other", &other.user, "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

/// The API router served with connect info (the source address of each request), with
/// these failure limits.
async fn serve_with_connect_info(
    control: patchbay::control::Control,
    limits: AuthFailureLimits,
) -> (String, tokio::task::JoinHandle<()>) {
    let app = router(AppState { control }).layer(axum::Extension(AuthFailures::new(limits)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, service).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_authentication_is_rate_limited_per_source_address() {
    let server = Server::sqlite().await;
    let acct = server.account("acct").await;
    let limits = AuthFailureLimits {
        per_address: 5,
        per_username: 0,
    };
    let (base, task) = serve_with_connect_info(server.app.control.clone(), limits).await;
    // Five failures with five different usernames: 401 each.
    for i in 0..5 {
        let (status, _, _) =
            attempt(&server.http, &base, "acct", &format!("guess{i}"), "nope").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // The sixth is over the address's budget (one refill per 12 s), and from then on the
    // address is refused before its credentials are looked at, even valid ones.
    let (status, retry_after, _) = attempt(&server.http, &base, "acct", "guess5", "nope").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=12).contains(&retry_after), "Retry-After {retry_after}");
    let (status, retry_after, _) =
        attempt(&server.http, &base, "acct", &acct.user, &acct.pass).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after.is_some());
    // Another server (its own counters) serves the same client as ever.
    let (status, _, _) = attempt(
        &server.http,
        &server.url(""),
        "acct",
        &acct.user,
        &acct.pass,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    task.abort();
    server.stop().await;
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Builds the app on the embedded database in `dir` (as `--data-dir` does), creates account
/// `account` (a write), and stops.
async fn start_on_data_dir(dir: &std::path::Path, account: &str) {
    let mut config = ServeConfig::for_database("unused");
    config.database.database_url = None;
    config.database.data_dir = Some(dir.to_path_buf());
    let app = App::build(&config).await.expect("build on the data dir");
    app.control()
        .create_account(AccountId::parse(account).expect("id"))
        .await
        .expect("a write");
    drop(app);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("patchbay-perm-{:016x}", rand_u64()));
    // Fresh: created private.
    let fresh = root.join("fresh").join("data");
    start_on_data_dir(&fresh, "a1").await;
    assert_eq!(mode(&fresh), 0o700, "data directory");
    let db = fresh.join("patchbay.db");
    assert_eq!(mode(&db), 0o600, "database");
    // SQLite gives its write-ahead log and shared-memory index the database file's mode.
    assert!(fresh.join("patchbay.db-wal").exists(), "WAL mode");
    for suffix in ["-wal", "-shm"] {
        let f = fresh.join(format!("patchbay.db{suffix}"));
        if f.exists() {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
    // Existing and open to others: tightened at start.
    let loose = root.join("loose");
    std::fs::create_dir_all(&loose).expect("dir");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let loose_db = loose.join("patchbay.db");
    std::fs::write(&loose_db, b"").expect("empty database file");
    std::fs::set_permissions(&loose_db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    start_on_data_dir(&loose, "a2").await;
    assert_eq!(mode(&loose), 0o700, "data directory tightened");
    assert_eq!(mode(&loose_db), 0o600, "database tightened");
    // And again (the secret exists now): still private, and the server starts.
    start_on_data_dir(&loose, "a3").await;
    assert_eq!(mode(&loose_db), 0o600);
    let _ = std::fs::remove_dir_all(&root);
}

fn rand_u64() -> u64 {
    u64::from_str_radix(&random_uuid().replace('-', "")[..16], 16).expect("hex")
}
