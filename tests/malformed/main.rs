//! Garbage in, clear 4xx out: property tests that throw arbitrary bytes and arbitrary JSON at
//! every endpoint that takes a body (and at path ids), through the real router, and check that
//! the answer is never a 5xx, always JSON, and that the server keeps working.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use patchbay::api::{router, AppState};
use patchbay::control::Control;
use patchbay::domain::AccountId;
use patchbay::store::SqlStore;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    auth: String,
    session: String,
    participant: String,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (app, auth) = rt.block_on(async {
        let store = SqlStore::open("sqlite::memory:").await.expect("store");
        let control = Control::new(Arc::new(store)).await.expect("control");
        let creds = control
            .create_account(AccountId::parse("fuzz").expect("id"))
            .await
            .expect("account");
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        (router(AppState { control }), format!("Basic {auth}"))
    });
    let mut f = Fixture {
        rt,
        app,
        auth,
        session: String::new(),
        participant: String::new(),
    };
    let (_, s) = f.call("POST", "/v1/accounts/fuzz/sessions", b"{}".to_vec());
    let (_, p) = f.call("POST", "/v1/accounts/fuzz/participants", Vec::new());
    f.session = s["id"].as_str().expect("session id").to_owned();
    f.participant = p["participant"]["id"]
        .as_str()
        .expect("participant id")
        .to_owned();
    f
}

impl Fixture {
    fn call(&self, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        self.rt.block_on(async {
            let resp = self.app.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .expect("body");
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("{status}: non-JSON body ({e}): {bytes:?}"))
            };
            (status, value)
        })
    }

    /// The endpoints that take a body, with our fixture's ids.
    fn body_endpoints(&self) -> Vec<(&'static str, String)> {
        let (s, p) = (&self.session, &self.participant);
        vec![
            ("POST", "/v1/accounts/fuzz/participants".into()),
            ("POST", "/v1/accounts/fuzz/sessions".into()),
            (
                "PUT",
                format!("/v1/accounts/fuzz/sessions/{s}/participants/{p}"),
            ),
            (
                "PUT",
                format!("/v1/accounts/fuzz/sessions/{s}/participants/{p}/subscriptions"),
            ),
            (
                "PUT",
                format!("/v1/accounts/fuzz/sessions/{s}/subscriptions"),
            ),
        ]
    }
}

fn check(status: StatusCode, body: &Value, what: &str) {
    assert!(!status.is_server_error(), "{what}: got {status} {body}");
    if status.is_client_error() {
        let message = body["error"].as_str().or(body["message"].as_str());
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "{what}: {status} without a message: {body}"
        );
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9~ _-]{0,60}".prop_map(Value::String),
        Just(json!("AUDIO")),
        Just(json!("v3")),
        Just(json!("00000000-0000-0000-0000-000000000000")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("sessionId".to_owned()),
            Just("participants".to_owned()),
            Just("participantId".to_owned()),
            Just("streamAliases".to_owned()),
            Just("publishPermissions".to_owned()),
            Just("deviceApiVersion".to_owned()),
            Just("callbackUrl".to_owned()),
            Just("tag".to_owned()),
            "[a-z]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_break_a_body_endpoint(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let f = fixture();
        for (method, path) in f.body_endpoints() {
            let (status, value) = f.call(method, &path, body.clone());
            check(status, &value, &format!("{method} {path}"));
        }
    }

    #[test]
    fn arbitrary_json_never_breaks_a_body_endpoint(body in arb_json()) {
        let f = fixture();
        let bytes = serde_json::to_vec(&body).expect("serialize");
        for (method, path) in f.body_endpoints() {
            let (status, value) = f.call(method, &path, bytes.clone());
            check(status, &value, &format!("{method} {path} {body}"));
        }
        // Still serving, and the fixture is intact or changed only through valid requests.
        let (status, _) = f.call("GET", &format!("/v1/accounts/fuzz/sessions/{}", f.session), Vec::new());
        prop_assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn arbitrary_path_segments_get_4xx(segment in "[^/?#]{0,40}") {
        let f = fixture();
        let seg = segment.replace('%', "%25").replace(' ', "%20");
        for path in [
            format!("/v1/accounts/fuzz/participants/{seg}"),
            format!("/v1/accounts/fuzz/sessions/{seg}"),
            format!("/v1/accounts/fuzz/sessions/{seg}/participants"),
            format!("/accounts/{seg}/sessions"),
        ] {
            let Ok(uri) = path.parse::<axum::http::Uri>() else { continue };
            let (status, value) = f.call("GET", &uri.to_string(), Vec::new());
            check(status, &value, &path);
        }
    }
}
