//! Arbitrary bytes as the JSON body of every REST endpoint that takes one, through the same
//! extraction and conversion to domain types as the handlers (`api::parse_body`). Nothing may
//! panic, and a body the server refuses is always the client's fault: a 400, never a 5xx.
//!
//! Input layout: byte 0 picks the endpoint; the rest is the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay::api::{parse_body, BodyKind};
use patchbay::domain::SessionId;

const KINDS: [BodyKind; 5] = [
    BodyKind::CreateParticipant,
    BodyKind::CreateSession,
    BodyKind::AddMember,
    BodyKind::SetSubscriptions,
    BodyKind::Rewire,
];

/// The session in the request's path (seeds use it as `sessionId` so the rules get parsed).
const PATH_SESSION: &str = "8b2f8a4e-4c1d-4f55-9a55-0d7f1f1f2a01";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(selector) % KINDS.len()];
    let session = SessionId::parse(PATH_SESSION).expect("a valid session id");
    if let Err(e) = parse_body(kind, session, body) {
        let status = e.status();
        assert_eq!(status.as_u16(), 400, "{kind:?}: {e} is {status}");
        assert!(!e.to_string().is_empty());
    }
});
